// Small wrappers over OpenSSL's libcrypto for the authentication handshake:
// HMAC-SHA256, constant-time comparison and random bytes.
#pragma once

#include <string>

namespace llmdd {

std::string HmacSha256(const std::string &key, const std::string &data);
bool ConstantTimeEqual(const std::string &a, const std::string &b);
// Cryptographically random bytes (OpenSSL RAND_bytes).
std::string RandomBytes(size_t n);

}  // namespace llmdd
