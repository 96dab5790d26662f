/*
 * ge::AscendString: the string type of the CANN public APIs.
 *
 * ABI contract: every method is defined out of line in libllm_datadist.so; the
 * only data member is a shared_ptr whose control block (and deleter) is created
 * by the library, so clients built with either value of _GLIBCXX_USE_CXX11_ABI
 * can construct, copy, compare and destroy AscendStrings safely.
 *
 * A default-constructed (or nullptr-constructed) string is "null": GetString()
 * returns "", GetLength() returns 0, it orders before every non-null string and
 * equals only another null string. An empty non-null string is distinct from it.
 */
#ifndef INC_EXTERNAL_GRAPH_ASCEND_STRING_H_
#define INC_EXTERNAL_GRAPH_ASCEND_STRING_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#ifndef ASCEND_STRING_VISIBILITY
#define ASCEND_STRING_VISIBILITY __attribute__((visibility("default")))
#endif

namespace ge {
using char_t = char;

class ASCEND_STRING_VISIBILITY AscendString {
 public:
  AscendString() = default;
  ~AscendString() = default;
  AscendString(const char_t *const name);  // NOLINT: implicit by design (CANN samples rely on it)
  AscendString(const char_t *const name, size_t length);

  const char_t *GetString() const;
  size_t GetLength() const;
  size_t Find(const AscendString &ascend_string) const;
  size_t Hash() const;

  bool operator<(const AscendString &d) const;
  bool operator>(const AscendString &d) const;
  bool operator<=(const AscendString &d) const;
  bool operator>=(const AscendString &d) const;
  bool operator==(const AscendString &d) const;
  bool operator!=(const AscendString &d) const;
  bool operator==(const char_t *const d) const;
  bool operator!=(const char_t *const d) const;

 private:
  std::shared_ptr<std::string> name_;
};
}  // namespace ge

namespace std {
template <>
struct hash<ge::AscendString> {
  size_t operator()(const ge::AscendString &name) const { return name.Hash(); }
};
}  // namespace std

#endif  // INC_EXTERNAL_GRAPH_ASCEND_STRING_H_
