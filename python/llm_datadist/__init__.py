"""CANN's ``llm_datadist`` Python API (LLM-DataDist V2, cache manager mode) on any Linux host.

The same names, signatures, defaults, return shapes and status codes as CANN's
package, backed by this repository's libllm_datadist.so (shipped inside this
package). docs/PYTHON.md shows every call and where the behaviour differs.

    from llm_datadist import LLMDataDist, LLMRole, LLMConfig
    datadist = LLMDataDist(LLMRole.PROMPT, 1)
    config = LLMConfig(); config.device_id = 0; config.enable_cache_manager = True
    datadist.init(config.generate_options())
"""
from llm_datadist import _native
from llm_datadist.cache_manager import CacheManager
from llm_datadist.configs import LLMClusterInfo, LLMConfig, LlmConfig, LLMRole
from llm_datadist.data_type import DataType
from llm_datadist.llm_datadist import LLMDataDist
from llm_datadist.llm_types import BlocksCacheKey, Cache, CacheDesc, CacheKey, CacheKeyByIdAndIndex, Placement
from llm_datadist.status import LLMException, LLMStatusCode

__all__ = [
    "BlocksCacheKey", "Cache", "CacheDesc", "CacheKey", "CacheKeyByIdAndIndex", "CacheManager", "DataType",
    "LLMClusterInfo", "LLMConfig", "LLMDataDist", "LLMException", "LLMRole", "LLMStatusCode", "LlmConfig",
    "Placement",
]

# The version of the bundled libllm_datadist.so (llmdd_ext::Version()).
__version__ = _native.version()
