// A small JSON reader for option values that hold one JSON object (HIXL's
// GlobalResourceConfig: {"connect_pool.thread_num":"2", ...}). Members whose
// value is a string, number, true, false or null are returned as text (a
// string's text unescaped, the others as written); nested objects and arrays
// are checked for syntax and returned as their raw JSON text.
#pragma once

#include <map>
#include <string>

namespace llmdd {

// Parses `text` (one JSON object, surrounding whitespace allowed) into
// *members. False with *error saying where and why when it is not one.
// A key given twice keeps its last value.
bool ParseJsonObject(const std::string &text, std::map<std::string, std::string> *members, std::string *error);

}  // namespace llmdd
