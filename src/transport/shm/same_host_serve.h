// The serving half of the same-host transport (same_host_link.h is the
// requesting half): what this engine does with a same-host request on a lane
// whose requester it verified (ServeContext::same_host). The lane protocol
// (engine/lane.cc) reads and checks the request and pins its ranges first;
// these only carry out the copy, and never write the requester's memory.
#pragma once

#include <sys/uio.h>

#include <vector>

#include "engine/lane.h"
#include "engine/memory_registry.h"

namespace llmdd {

struct HoldWord;  // transport/shm/cma.h

// Whether the verified requester process still lives (a pidfd check); logs
// why not, naming `what` ("read", "write"), when it is gone: whoever holds the
// lane now is not the process we verified.
bool SameHostTrustHolds(const ServeContext &ctx, const char *what);

// READ: the requester copies out of our memory itself. Keeps the request's
// regions pinned (by the caller, until this returns) for a bounded lease,
// until the requester says Release. False ends the lane.
bool HoldSameHostRead(ByteStream &stream, const wire::MsgHeader &header, const ServeContext &ctx,
                      uint32_t timeout_ms);

// WRITE: one copy from the requester's ranges (`peer_iov`) into our
// registered memory (`iov`, pinned by `pins`), stopped at `requester_deadline`,
// once the requester shut the lane down, or (a held write, `hold`) once the
// requester released its hold, in which case what was copied is zeroed;
// answers with the outcome (nothing when the requester gave up). `sources`
// (wire::kFlagSourceMappings): the requester's shareable allocations holding
// every source range; where ctx.source_mappings maps them all, the copy is
// memcpy from those mappings, chunk by chunk, the hold read after each.
bool ServeSameHostWrite(ByteStream &stream, const wire::MsgHeader &header, const ServeContext &ctx,
                        const std::vector<iovec> &iov, const std::vector<iovec> &peer_iov, Deadline deadline,
                        Deadline requester_deadline, RegionPins &pins, const HoldWord *hold = nullptr,
                        const std::vector<wire::SourceMapping> &sources = {});

// A standing read lease request (wire::kLeaseRequest): lists our readable
// regions (at most wire::kMaxLeaseRegions) and holds back their removal for
// wire::kStandingLeaseMs. UNSUPPORTED when the verified process is gone.
bool ServeLeaseRequest(ByteStream &stream, const wire::MsgHeader &header, const ServeContext &ctx);

}  // namespace llmdd
