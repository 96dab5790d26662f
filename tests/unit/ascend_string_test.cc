// Unit tests for ge::AscendString (include/external/graph/ascend_string.h,
// src/common/ascend_string.cc): the null-vs-empty contract, embedded NULs,
// Find, Hash, ordering and use as a container key.
#include "external/graph/ascend_string.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace {

using ge::AscendString;

const char *const kNullCStr = nullptr;

// All six relational operators agree with a three-way answer.
void ExpectOrder(const AscendString &a, const AscendString &b, int expected, const char *what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(a < b, expected < 0);
  EXPECT_EQ(a > b, expected > 0);
  EXPECT_EQ(a <= b, expected <= 0);
  EXPECT_EQ(a >= b, expected >= 0);
  EXPECT_EQ(a == b, expected == 0);
  EXPECT_EQ(a != b, expected != 0);
  // ... and the mirrored pair.
  EXPECT_EQ(b < a, expected > 0);
  EXPECT_EQ(b > a, expected < 0);
  EXPECT_EQ(b <= a, expected >= 0);
  EXPECT_EQ(b >= a, expected <= 0);
  EXPECT_EQ(b == a, expected == 0);
  EXPECT_EQ(b != a, expected != 0);
}

TEST(AscendString, ImplicitFromCString) {
  // CANN samples rely on implicit conversion: options[KEY] = "0"; Connect("ip:port").
  static_assert(std::is_convertible<const char *, AscendString>::value, "implicit from const char*");
  AscendString s = "127.0.0.1:26000";
  EXPECT_STREQ(s.GetString(), "127.0.0.1:26000");
  EXPECT_EQ(s.GetLength(), 15U);
}

TEST(AscendString, DefaultIsNull) {
  AscendString s;
  ASSERT_NE(s.GetString(), nullptr);
  EXPECT_STREQ(s.GetString(), "");
  EXPECT_EQ(s.GetLength(), 0U);
  EXPECT_EQ(s.Hash(), 0U);
}

TEST(AscendString, NullptrConstructorsGiveNull) {
  AscendString a(kNullCStr);
  AscendString b(kNullCStr, 5);  // length is ignored for a null pointer
  for (const AscendString *s : {&a, &b}) {
    ASSERT_NE(s->GetString(), nullptr);
    EXPECT_STREQ(s->GetString(), "");
    EXPECT_EQ(s->GetLength(), 0U);
    EXPECT_EQ(*s, AscendString());
  }
  EXPECT_EQ(a, b);
}

TEST(AscendString, EmptyIsNotNull) {
  AscendString null_string;
  AscendString empty("");
  AscendString empty_len("abc", 0);
  EXPECT_STREQ(empty.GetString(), "");
  EXPECT_EQ(empty.GetLength(), 0U);
  EXPECT_EQ(empty_len.GetLength(), 0U);
  EXPECT_EQ(empty, empty_len);

  EXPECT_NE(null_string, empty);
  EXPECT_FALSE(null_string == empty);
  ExpectOrder(null_string, empty, -1, "null vs empty");
  ExpectOrder(null_string, AscendString(), 0, "null vs null");
  ExpectOrder(empty, AscendString(""), 0, "empty vs empty");
}

TEST(AscendString, NullOrdersBeforeEveryNonNull) {
  AscendString null_string;
  for (const char *text : {"", "\x01", "a", "zzzz", "\xff"}) {
    ExpectOrder(null_string, AscendString(text), -1, text);
  }
  ExpectOrder(null_string, AscendString("\0", 1), -1, "single NUL");
}

TEST(AscendString, CompareWithCString) {
  AscendString null_string;
  AscendString empty("");
  AscendString abc("abc");

  EXPECT_TRUE(abc == "abc");
  EXPECT_FALSE(abc != "abc");
  EXPECT_FALSE(abc == "ab");
  EXPECT_FALSE(abc == "abcd");
  EXPECT_TRUE(abc != "abd");
  EXPECT_FALSE(abc == kNullCStr);
  EXPECT_TRUE(abc != kNullCStr);

  // Null equals only a null pointer; empty equals only "".
  EXPECT_TRUE(null_string == kNullCStr);
  EXPECT_FALSE(null_string != kNullCStr);
  EXPECT_FALSE(null_string == "");
  EXPECT_TRUE(null_string != "");
  EXPECT_TRUE(empty == "");
  EXPECT_FALSE(empty == kNullCStr);
  EXPECT_TRUE(empty != kNullCStr);
}

TEST(AscendString, PointerLengthConstructorKeepsEmbeddedNuls) {
  const char raw[] = {'a', '\0', 'b', '\0', 'c'};
  AscendString s(raw, sizeof(raw));
  EXPECT_EQ(s.GetLength(), 5U);
  EXPECT_EQ(memcmp(s.GetString(), raw, sizeof(raw)), 0);
  EXPECT_EQ(s.GetString()[5], '\0') << "storage stays NUL-terminated";

  // A prefix of the bytes is taken when length is shorter than the C string.
  AscendString prefix("abcdef", 3);
  EXPECT_EQ(prefix.GetLength(), 3U);
  EXPECT_STREQ(prefix.GetString(), "abc");
  EXPECT_EQ(prefix, AscendString("abc"));

  // Strings that differ only after an embedded NUL are different.
  AscendString x("a\0x", 3);
  AscendString y("a\0y", 3);
  AscendString a("a");
  EXPECT_NE(x, y);
  ExpectOrder(x, y, -1, "a\\0x vs a\\0y");
  ExpectOrder(a, x, -1, "a is a proper prefix of a\\0x");

  // operator==(const char*) compares the whole length, not up to the first NUL.
  EXPECT_FALSE(x == "a");
  EXPECT_TRUE(x != "a");
  EXPECT_TRUE(a == "a");
}

TEST(AscendString, StoresACopy) {
  char buffer[] = "mutable";
  AscendString s(buffer);
  AscendString t(buffer, 3);
  buffer[0] = 'X';
  EXPECT_STREQ(s.GetString(), "mutable");
  EXPECT_STREQ(t.GetString(), "mut");
}

TEST(AscendString, Find) {
  AscendString hay("hello world, hello");
  EXPECT_EQ(hay.Find("hello"), 0U);
  EXPECT_EQ(hay.Find("world"), 6U);
  EXPECT_EQ(hay.Find(", h"), 11U);
  EXPECT_EQ(hay.Find("hello world, hello"), 0U);
  EXPECT_EQ(hay.Find("absent"), std::string::npos);
  EXPECT_EQ(hay.Find("hello world, hello!"), std::string::npos);
  // A non-null empty needle is found at 0 (std::string semantics) ...
  EXPECT_EQ(hay.Find(""), 0U);
  EXPECT_EQ(AscendString("").Find(""), 0U);
  // ... but a null needle or a null haystack finds nothing.
  EXPECT_EQ(hay.Find(AscendString()), std::string::npos);
  EXPECT_EQ(AscendString().Find("a"), std::string::npos);
  EXPECT_EQ(AscendString().Find(""), std::string::npos);
  EXPECT_EQ(AscendString().Find(AscendString()), std::string::npos);
  // Embedded NULs take part in the search.
  AscendString bin("ab\0cd\0ef", 8);
  EXPECT_EQ(bin.Find(AscendString("\0ef", 3)), 5U);
  EXPECT_EQ(bin.Find(AscendString("d\0e", 3)), 4U);
  EXPECT_EQ(bin.Find("cd"), 3U);
}

TEST(AscendString, HashMatchesStdHashOfContent) {
  for (const char *text : {"", "a", "127.0.0.1:26000", "llm.ListenIpInfo"}) {
    AscendString s(text);
    EXPECT_EQ(s.Hash(), std::hash<std::string>()(text)) << text;
    EXPECT_EQ(std::hash<AscendString>()(s), s.Hash()) << text;
  }
  AscendString bin("x\0y", 3);
  EXPECT_EQ(bin.Hash(), std::hash<std::string>()(std::string("x\0y", 3)));
  EXPECT_EQ(std::hash<AscendString>()(AscendString()), 0U);
}

TEST(AscendString, EqualStringsHashEqual) {
  AscendString a("engine-0");
  AscendString b(std::string("engine-0").c_str());
  AscendString c("engine-0xyz", 8);
  ASSERT_EQ(a, b);
  ASSERT_EQ(a, c);
  EXPECT_EQ(a.Hash(), b.Hash());
  EXPECT_EQ(a.Hash(), c.Hash());
  AscendString copy = a;
  EXPECT_EQ(copy.Hash(), a.Hash());
}

TEST(AscendString, OrderingMatchesStdString) {
  const std::vector<std::string> words = {"",        "a",     "A",   "ab",          "abc", "abd",
                                          "b",       "\x7f",  "\x80", "\xff",       "10",  "9",
                                          "1.2.3.4", "1.2.3.4:80", std::string("a\0", 2)};
  for (const std::string &x : words) {
    for (const std::string &y : words) {
      AscendString ax(x.data(), x.size());
      AscendString ay(y.data(), y.size());
      int expected = x.compare(y);
      expected = expected < 0 ? -1 : (expected > 0 ? 1 : 0);
      std::string label = "'" + x + "' vs '" + y + "'";
      ExpectOrder(ax, ay, expected, label.c_str());
    }
  }
}

TEST(AscendString, MapKeyAsInOptions) {
  std::map<AscendString, AscendString> options;
  options["llm.ListenIpInfo"] = "127.0.0.1:26000";
  options["llm.DeviceId"] = "0";
  options["adxl.BufferPool"] = "4:8";
  options["llm.DeviceId"] = "1";  // overwrite through an equal key built separately
  ASSERT_EQ(options.size(), 3U);
  EXPECT_EQ(options["llm.DeviceId"], "1");
  auto it = options.find(AscendString("adxl.BufferPool"));
  ASSERT_NE(it, options.end());
  EXPECT_STREQ(it->second.GetString(), "4:8");
  EXPECT_EQ(options.find("absent"), options.end());

  // Null, empty and non-empty keys are three distinct keys, null first.
  std::map<AscendString, int> m;
  m["b"] = 3;
  m[AscendString("")] = 2;
  m[AscendString()] = 1;
  m["a"] = 4;
  m[AscendString(kNullCStr)] = 10;  // same key as AscendString()
  ASSERT_EQ(m.size(), 4U);
  std::vector<int> order;
  for (const auto &kv : m) order.push_back(kv.second);
  EXPECT_EQ(order, (std::vector<int>{10, 2, 4, 3}));
  EXPECT_EQ(m.begin()->first, AscendString());
  EXPECT_NE(m.begin()->first, AscendString(""));
}

TEST(AscendString, SetAndUnorderedContainers) {
  std::set<AscendString> ordered = {"x", "y", "x", AscendString(), AscendString(""), AscendString()};
  EXPECT_EQ(ordered.size(), 4U);

  std::unordered_set<AscendString> hashed;
  hashed.insert("127.0.0.1:26000");
  hashed.insert(AscendString("127.0.0.1:26000"));
  hashed.insert("127.0.0.1:26001");
  hashed.insert(AscendString());
  hashed.insert(AscendString(""));
  EXPECT_EQ(hashed.size(), 4U);
  EXPECT_EQ(hashed.count("127.0.0.1:26001"), 1U);
  EXPECT_EQ(hashed.count(AscendString()), 1U);
  EXPECT_EQ(hashed.count("127.0.0.1"), 0U);

  std::unordered_map<AscendString, int> counts;
  for (const char *k : {"a", "b", "a", "a"}) ++counts[k];
  EXPECT_EQ(counts["a"], 3);
  EXPECT_EQ(counts["b"], 1);
}

TEST(AscendString, CopySemantics) {
  AscendString original("first");
  AscendString copy(original);
  EXPECT_EQ(copy, original);
  EXPECT_STREQ(copy.GetString(), "first");

  original = AscendString("second");  // rebinding the original leaves the copy alone
  EXPECT_STREQ(copy.GetString(), "first");
  EXPECT_STREQ(original.GetString(), "second");

  AscendString assigned;
  assigned = copy;
  EXPECT_EQ(assigned, copy);
  copy = AscendString();  // copy becomes null; assigned keeps its value
  EXPECT_EQ(copy, AscendString());
  EXPECT_STREQ(assigned.GetString(), "first");

  // Assigning a null over a value and a value over a null.
  AscendString n;
  AscendString v("v");
  AscendString n2 = n;
  EXPECT_EQ(n2, AscendString());
  n2 = v;
  EXPECT_EQ(n2, "v");
  v = n;
  EXPECT_EQ(v, AscendString());
  EXPECT_EQ(n2, "v");

  // Self-assignment keeps the value.
  AscendString self("self");
  const AscendString &alias = self;
  self = alias;
  EXPECT_STREQ(self.GetString(), "self");
}

TEST(AscendString, MovedToHoldsValueAndSourceStaysUsable) {
  AscendString source("moved");
  AscendString target(std::move(source));
  EXPECT_STREQ(target.GetString(), "moved");
  // Whatever the moved-from state is, it must be usable.
  EXPECT_NE(source.GetString(), nullptr);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(strlen(source.GetString()), source.GetLength());
  source = "again";
  EXPECT_STREQ(source.GetString(), "again");

  std::vector<AscendString> v;
  for (int i = 0; i < 100; ++i) v.emplace_back(std::to_string(i).c_str());  // reallocation moves/copies
  for (int i = 0; i < 100; ++i) EXPECT_EQ(v[i], std::to_string(i).c_str());
  std::sort(v.begin(), v.end());
  EXPECT_TRUE(std::is_sorted(v.begin(), v.end()));
  EXPECT_EQ(v.front(), "0");
  EXPECT_EQ(v.back(), "99");
}

TEST(AscendString, GetStringPointerStableAcrossCopies) {
  // Copies share immutable storage; GetString() of a live copy stays valid after
  // the original is destroyed.
  const char *p = nullptr;
  AscendString survivor;
  {
    AscendString temp("shared-storage");
    survivor = temp;
    p = survivor.GetString();
  }
  EXPECT_STREQ(p, "shared-storage");
  EXPECT_STREQ(survivor.GetString(), "shared-storage");
}

}  // namespace
