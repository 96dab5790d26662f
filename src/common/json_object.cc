#include "common/json_object.h"

#include <cstdint>

namespace llmdd {
namespace {

constexpr int kMaxDepth = 32;

class Reader {
 public:
  explicit Reader(const std::string &text) : s_(text) {}

  bool Object(std::map<std::string, std::string> *members, std::string *error) {
    SkipSpace();
    if (!Expect('{')) return Fail("expected '{'", error);
    SkipSpace();
    if (Peek() == '}') {
      ++pos_;
    } else {
      for (;;) {
        SkipSpace();
        std::string key;
        if (Peek() != '"' || !String(&key)) return Fail("expected a member name (a string)", error);
        SkipSpace();
        if (!Expect(':')) return Fail("expected ':' after \"" + key + "\"", error);
        SkipSpace();
        std::string value;
        if (!Value(0, &value)) return Fail("bad value of \"" + key + "\"", error);
        (*members)[key] = value;
        SkipSpace();
        if (Expect(',')) continue;
        if (Expect('}')) break;
        return Fail("expected ',' or '}'", error);
      }
    }
    SkipSpace();
    if (pos_ != s_.size()) return Fail("text after the object", error);
    return true;
  }

 private:
  char Peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  bool Expect(char c) {
    if (Peek() != c || pos_ >= s_.size()) return false;
    ++pos_;
    return true;
  }
  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }
  bool Fail(const std::string &what, std::string *error) {
    *error = what + " at offset " + std::to_string(pos_);
    return false;
  }

  // A value; scalars as text, containers as their raw JSON.
  bool Value(int depth, std::string *out) {
    const size_t start = pos_;
    const char c = Peek();
    if (c == '"') return String(out);
    if (c == '{' || c == '[') {
      if (depth >= kMaxDepth || !Container(depth + 1)) return false;
      *out = s_.substr(start, pos_ - start);
      return true;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
      if (!Number()) return false;
    } else if (!Word("true") && !Word("false") && !Word("null")) {
      return false;
    }
    *out = s_.substr(start, pos_ - start);
    return true;
  }

  bool Container(int depth) {
    const char close = Peek() == '{' ? '}' : ']';
    const bool object = close == '}';
    ++pos_;
    SkipSpace();
    if (Expect(close)) return true;
    for (;;) {
      SkipSpace();
      std::string ignored;
      if (object) {
        if (Peek() != '"' || !String(&ignored)) return false;
        SkipSpace();
        if (!Expect(':')) return false;
        SkipSpace();
      }
      if (!Value(depth, &ignored)) return false;
      SkipSpace();
      if (Expect(',')) continue;
      return Expect(close);
    }
  }

  bool Word(const char *word) {
    size_t n = 0;
    while (word[n] != '\0') ++n;
    if (s_.compare(pos_, n, word) != 0) return false;
    pos_ += n;
    return true;
  }

  bool Digits() {
    const size_t start = pos_;
    while (Peek() >= '0' && Peek() <= '9' && pos_ < s_.size()) ++pos_;
    return pos_ > start;
  }

  bool Number() {
    Expect('-');
    if (!Digits()) return false;
    if (Expect('.') && !Digits()) return false;
    if (Peek() == 'e' || Peek() == 'E') {
      ++pos_;
      if (!Expect('+')) Expect('-');
      if (!Digits()) return false;
    }
    return true;
  }

  static int HexValue(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  bool Hex4(uint32_t *out) {
    if (pos_ + 4 > s_.size()) return false;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const int h = HexValue(s_[pos_ + i]);
      if (h < 0) return false;
      v = v * 16 + static_cast<uint32_t>(h);
    }
    pos_ += 4;
    *out = v;
    return true;
  }

  static void AppendUtf8(uint32_t cp, std::string *out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  // A string starting at the opening quote, unescaped into *out.
  bool String(std::string *out) {
    out->clear();
    if (!Expect('"')) return false;
    while (pos_ < s_.size()) {
      const char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (pos_ >= s_.size()) return false;
      const char e = s_[pos_++];
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp = 0;
          if (!Hex4(&cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // a surrogate pair
            uint32_t low = 0;
            if (!Expect('\\') || !Expect('u') || !Hex4(&low) || low < 0xDC00 || low > 0xDFFF) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return false;
          }
          AppendUtf8(cp, out);
          break;
        }
        default: return false;
      }
    }
    return false;  // unterminated
  }

  const std::string &s_;
  size_t pos_ = 0;
};

}  // namespace

bool ParseJsonObject(const std::string &text, std::map<std::string, std::string> *members, std::string *error) {
  members->clear();
  Reader reader(text);
  return reader.Object(members, error);
}

}  // namespace llmdd
