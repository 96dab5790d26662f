// Names of the status values of both public APIs, for log lines and error
// texts: ADXL (adxl::Status, adxl/adxl_types.h) and LLM-DataDist
// (ge::Status, llm_datadist/llm_datadist.h). The two code spaces do not
// overlap except at 0, which both call success ("SUCCESS").
#pragma once

#include <cstdint>
#include <string>

namespace llmdd {

// The bare name ("PARAM_INVALID", "LLM_LINK_FAILED"), or nullptr for a value
// neither API defines. A static string.
const char *StatusNameOrNull(uint32_t status);

// The name with its number, as docs/API.md writes it: ADXL codes in decimal
// ("PARAM_INVALID (103900)"), LLM-DataDist codes in hex
// ("LLM_LINK_FAILED (0x5010B009)", "LLM_FAILED (0xFFFFFFFF)"); a value neither
// API defines is "unknown status (N)" (N in hex from 0x10000000 on, where the
// LLM-DataDist codes live, in decimal below).
std::string StatusText(uint32_t status);

}  // namespace llmdd
