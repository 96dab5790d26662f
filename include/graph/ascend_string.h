#ifndef INC_GRAPH_ASCEND_STRING_FWD_H_
#define INC_GRAPH_ASCEND_STRING_FWD_H_
#include "../external/graph/ascend_string.h"
#endif
