// AuthKey: the shared secret of --auth-key-file, and the HMAC-SHA256 proofs
// of the page protocol's mutual authentication (docs/protocol.md,
// "Authentication"). Both ends hold the same key; each proves it by a MAC
// over a fresh nonce from each side, bound to its role, so a proof is never
// valid for another connection or for the other direction.
//
// The secret never leaves this object: there is no accessor, nothing here
// logs it, and it is wiped on destruction. Immutable after creation, so it
// may be shared between threads.
#ifndef LAZYRAM_DAEMON_PROTOCOL_AUTH_KEY_H_
#define LAZYRAM_DAEMON_PROTOCOL_AUTH_KEY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/protocol/protocol.h"

namespace lazyram {

class AuthKey {
 public:
  // Who is proving: a client's proof never verifies as a server's.
  enum class Role { kClient, kServer };
  static constexpr size_t kMinSize = 16;
  static constexpr size_t kMaxSize = 4096;

  // Reads a key file with ssh's rules: a regular file owned by this user
  // (or root) with no group or other permissions, kMinSize .. kMaxSize
  // bytes after one trailing newline is stripped. Errors are one line that
  // names the file, never its content.
  static absl::StatusOr<std::shared_ptr<const AuthKey>> LoadFile(const std::string& path);
  // The same length rules, for tests.
  static absl::StatusOr<std::shared_ptr<const AuthKey>> FromSecret(std::string secret);

  AuthKey(const AuthKey&) = delete;
  AuthKey& operator=(const AuthKey&) = delete;
  ~AuthKey();

  // HMAC-SHA256(key, label(role) || server_nonce || client_nonce).
  absl::StatusOr<protocol::Proof> Prove(Role role, const protocol::Nonce& server_nonce,
                                        const protocol::Nonce& client_nonce) const;
  // Constant-time comparison with the expected proof.
  bool Verify(Role role, const protocol::Nonce& server_nonce, const protocol::Nonce& client_nonce,
              const protocol::Proof& proof) const;

 private:
  explicit AuthKey(std::string secret) : secret_(std::move(secret)) {}
  std::string secret_;
};

// A nonce from OpenSSL's CSPRNG; kInternal if it cannot produce one.
absl::StatusOr<protocol::Nonce> RandomNonce();

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_PROTOCOL_AUTH_KEY_H_
