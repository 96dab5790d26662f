"""Status codes and the exception of CANN's llm_datadist package.

LLMStatusCode values are the C++ status numbers (llm_datadist/llm_datadist.h,
docs/API.md), so a code from the native layer maps by value; a number this
table does not know maps to LLM_FAILED, as in CANN.
"""
from enum import IntEnum

__all__ = ["LLMStatusCode", "LLMException", "code_2_status"]


class LLMStatusCode(IntEnum):
    LLM_SUCCESS = 0x0
    LLM_FAILED = 0xFFFFFFFF
    LLM_WAIT_PROCESS_TIMEOUT = 0x5010B001
    LLM_KV_CACHE_NOT_EXIST = 0x5010B002
    LLM_REPEAT_REQUEST = 0x5010B003
    LLM_REQUEST_ALREADY_COMPLETED = 0x5010B004
    LLM_PARAM_INVALID = 0x5010B005
    LLM_ENGINE_FINALIZED = 0x5010B006
    LLM_NOT_YET_LINK = 0x5010B007
    LLM_ALREADY_LINK = 0x5010B008
    LLM_LINK_FAILED = 0x5010B009
    LLM_UNLINK_FAILED = 0x5010B00A
    LLM_NOTIFY_PROMPT_UNLINK_FAILED = 0x5010B00B
    LLM_CLUSTER_NUM_EXCEED_LIMIT = 0x5010B00C
    LLM_PROCESSING_LINK = 0x5010B00D
    LLM_DEVICE_OUT_OF_MEMORY = 0x5010B00E
    LLM_PREFIX_ALREADY_EXIST = 0x5010B00F
    LLM_PREFIX_NOT_EXIST = 0x5010B010
    LLM_SEQ_LENOVERLIMIT = 0x5010B011
    LLM_NO_FREE_BLOCK = 0x5010B012
    LLM_BLOCKS_OUT_OF_MEMORY = 0x5010B013
    LLM_EXIST_LINK = 0x5010B018
    LLM_FEATURE_NOT_ENABLED = 0x5010B019
    LLM_TIMEOUT = 0x5010B01A
    LLM_LINK_BUSY = 0x5010B01B
    LLM_OUT_OF_MEMORY = 0x5010B01C
    # ACL runtime numbers in CANN (ACL_ERROR_RT_DEVICE_MEM_ERROR,
    # ACL_ERROR_RT_SUSPECT_REMOTE_ERROR); never returned here.
    LLM_DEVICE_MEM_ERROR = 507053
    LLM_SUSPECT_REMOTE_ERROR = 507057
    LLM_UNKNOWN_ERROR = -1

    def __str__(self):
        return f"{self.__class__.__name__}.{self.name}"


class LLMException(RuntimeError):
    """A failed call: ``status_code`` says which LLMStatusCode, the message why."""

    def __init__(self, *args, status_code=LLMStatusCode.LLM_SUCCESS):
        super().__init__(*args)
        self._status_code = status_code

    @property
    def status_code(self):
        return self._status_code


_KNOWN = {int(code): code for code in LLMStatusCode}


def code_2_status(code) -> LLMStatusCode:
    """The LLMStatusCode of a native status number (LLM_FAILED if unknown)."""
    return _KNOWN.get(int(code), LLMStatusCode.LLM_FAILED)


def raise_if_false(pred, message, status_code=LLMStatusCode.LLM_PARAM_INVALID):
    """CANN's value checks: a failed one raises LLMException (LLM_PARAM_INVALID by default)."""
    if not pred:
        raise LLMException(message, status_code=status_code)


def raise_for_status(code, func_name, native_module, context=""):
    """Raises LLMException for a native status other than success.

    The message is CANN's "<func> failed, error code is <status>, <info>." with,
    as info, the lines the C++ layer logged for this call on this thread
    (llmdd_ext::LastErrors), then ``context``.
    """
    if code == 0:
        return
    status = code_2_status(code)
    info = native_module.last_errors()
    if context:
        info = f"{info} ({context})" if info else context
    raise LLMException(f"{func_name} failed, error code is {status}, {info or 'no reason logged'}.",
                       status_code=status)
