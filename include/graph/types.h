#ifndef INC_GRAPH_TYPES_FWD_H_
#define INC_GRAPH_TYPES_FWD_H_
#include "../external/graph/types.h"
#endif
