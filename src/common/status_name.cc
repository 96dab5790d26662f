#include "common/status_name.h"

#include <cinttypes>
#include <cstdio>

#include "adxl/adxl_types.h"
#include "llm_datadist/llm_datadist.h"

namespace llmdd {
namespace {

struct Named {
  uint32_t value;
  const char *name;
  bool hex;  // LLM-DataDist codes are documented in hex
};

// Every status value of adxl/adxl_types.h and llm_datadist/llm_datadist.h
// (ge::SUCCESS and ge::FAILED are LLM_SUCCESS and LLM_FAILED).
constexpr Named kStatuses[] = {
    {adxl::SUCCESS, "SUCCESS", false},
    {adxl::PARAM_INVALID, "PARAM_INVALID", false},
    {adxl::TIMEOUT, "TIMEOUT", false},
    {adxl::NOT_CONNECTED, "NOT_CONNECTED", false},
    {adxl::ALREADY_CONNECTED, "ALREADY_CONNECTED", false},
    {adxl::NOTIFY_FAILED, "NOTIFY_FAILED", false},
    {adxl::UNSUPPORTED, "UNSUPPORTED", false},
    {adxl::RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED", false},
    {adxl::FAILED, "FAILED", false},
    {llm_datadist::LLM_FAILED, "LLM_FAILED", true},
    {llm_datadist::LLM_WAIT_PROC_TIMEOUT, "LLM_WAIT_PROC_TIMEOUT", true},
    {llm_datadist::LLM_KV_CACHE_NOT_EXIST, "LLM_KV_CACHE_NOT_EXIST", true},
    {llm_datadist::LLM_PARAM_INVALID, "LLM_PARAM_INVALID", true},
    {llm_datadist::LLM_NOT_YET_LINK, "LLM_NOT_YET_LINK", true},
    {llm_datadist::LLM_ALREADY_LINK, "LLM_ALREADY_LINK", true},
    {llm_datadist::LLM_LINK_FAILED, "LLM_LINK_FAILED", true},
    {llm_datadist::LLM_UNLINK_FAILED, "LLM_UNLINK_FAILED", true},
    {llm_datadist::LLM_NOTIFY_PROMPT_UNLINK_FAILED, "LLM_NOTIFY_PROMPT_UNLINK_FAILED", true},
    {llm_datadist::LLM_CLUSTER_NUM_EXCEED_LIMIT, "LLM_CLUSTER_NUM_EXCEED_LIMIT", true},
    {llm_datadist::LLM_PROCESSING_LINK, "LLM_PROCESSING_LINK", true},
    {llm_datadist::LLM_DEVICE_OUT_OF_MEMORY, "LLM_DEVICE_OUT_OF_MEMORY", true},
    {llm_datadist::LLM_EXIST_LINK, "LLM_EXIST_LINK", true},
    {llm_datadist::LLM_FEATURE_NOT_ENABLED, "LLM_FEATURE_NOT_ENABLED", true},
    {llm_datadist::LLM_TIMEOUT, "LLM_TIMEOUT", true},
    {llm_datadist::LLM_LINK_BUSY, "LLM_LINK_BUSY", true},
    {llm_datadist::LLM_OUT_OF_MEMORY, "LLM_OUT_OF_MEMORY", true},
};

const Named *Find(uint32_t status) {
  for (const Named &n : kStatuses) {
    if (n.value == status) return &n;
  }
  return nullptr;
}

}  // namespace

const char *StatusNameOrNull(uint32_t status) {
  const Named *n = Find(status);
  return n == nullptr ? nullptr : n->name;
}

std::string StatusText(uint32_t status) {
  char buf[64];
  const Named *n = Find(status);
  if (n == nullptr) {
    snprintf(buf, sizeof(buf), status >= 0x10000000U ? "unknown status (0x%08" PRIX32 ")" : "unknown status (%" PRIu32 ")",
             status);
  } else if (n->hex) {
    snprintf(buf, sizeof(buf), "%s (0x%08" PRIX32 ")", n->name, status);
  } else {
    snprintf(buf, sizeof(buf), "%s (%" PRIu32 ")", n->name, status);
  }
  return buf;
}

}  // namespace llmdd
