#include "daemon/protocol/auth_key.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/base/errno_status.h"
#include "daemon/base/unique_fd.h"

namespace lazyram {
namespace {

// Fixed-length labels (NUL included) so that the MAC input is unambiguous:
// label || server_nonce || client_nonce.
constexpr char kClientLabel[] = "lazyram v1 client proof";
constexpr char kServerLabel[] = "lazyram v1 server proof";
static_assert(sizeof kClientLabel == sizeof kServerLabel);

absl::Status CheckLength(const std::string& where, size_t size) {
  if (size == 0) return absl::InvalidArgumentError(absl::StrCat(where, " is empty"));
  if (size < AuthKey::kMinSize) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " holds ", size, " bytes; a key needs at least ", AuthKey::kMinSize,
                     " (for example: head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE)"));
  }
  if (size > AuthKey::kMaxSize) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " is larger than ", AuthKey::kMaxSize, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<const AuthKey>> AuthKey::LoadFile(const std::string& path) {
  const std::string where = absl::StrCat("key file ", path);
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("cannot read ", where));
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("cannot stat ", where));
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(where, " is not a regular file"));
  }
  // As ssh does with private keys: a secret others can read is no secret.
  if ((st.st_mode & 077) != 0) {
    return absl::PermissionDeniedError(
        absl::StrFormat("%s is accessible by group or others (mode %04o): chmod 600 %s", where,
                        st.st_mode & 07777, path));
  }
  if (st.st_uid != geteuid() && st.st_uid != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat(where, " is owned by uid ", st.st_uid, ", not by this user or root"));
  }
  std::string secret(kMaxSize + 2, '\0');  // room to notice an oversized file
  size_t got = 0;
  while (got < secret.size()) {
    ssize_t n = read(fd.get(), secret.data() + got, secret.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status error = ErrnoStatus(errno, absl::StrCat("cannot read ", where));
      OPENSSL_cleanse(secret.data(), secret.size());
      return error;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got > 0 && secret[got - 1] == '\n') --got;  // `echo KEY > FILE`
  OPENSSL_cleanse(secret.data() + got, secret.size() - got);
  secret.resize(got);
  if (absl::Status s = CheckLength(where, got); !s.ok()) {
    OPENSSL_cleanse(secret.data(), secret.size());
    return s;
  }
  return std::shared_ptr<const AuthKey>(new AuthKey(std::move(secret)));
}

absl::StatusOr<std::shared_ptr<const AuthKey>> AuthKey::FromSecret(std::string secret) {
  if (absl::Status s = CheckLength("the key", secret.size()); !s.ok()) return s;
  return std::shared_ptr<const AuthKey>(new AuthKey(std::move(secret)));
}

AuthKey::~AuthKey() { OPENSSL_cleanse(secret_.data(), secret_.size()); }

absl::StatusOr<protocol::Proof> AuthKey::Prove(Role role, const protocol::Nonce& server_nonce,
                                               const protocol::Nonce& client_nonce) const {
  uint8_t message[sizeof kClientLabel + 2 * protocol::kNonceSize];
  std::memcpy(message, role == Role::kClient ? kClientLabel : kServerLabel, sizeof kClientLabel);
  std::memcpy(message + sizeof kClientLabel, server_nonce.data(), protocol::kNonceSize);
  std::memcpy(message + sizeof kClientLabel + protocol::kNonceSize, client_nonce.data(),
              protocol::kNonceSize);
  protocol::Proof proof;
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), secret_.data(), static_cast<int>(secret_.size()), message, sizeof message,
           proof.data(), &len) == nullptr ||
      len != proof.size()) {
    return absl::InternalError("HMAC-SHA256 failed");
  }
  return proof;
}

bool AuthKey::Verify(Role role, const protocol::Nonce& server_nonce,
                     const protocol::Nonce& client_nonce, const protocol::Proof& proof) const {
  absl::StatusOr<protocol::Proof> expected = Prove(role, server_nonce, client_nonce);
  return expected.ok() && CRYPTO_memcmp(expected->data(), proof.data(), proof.size()) == 0;
}

absl::StatusOr<protocol::Nonce> RandomNonce() {
  protocol::Nonce nonce;
  if (RAND_bytes(nonce.data(), static_cast<int>(nonce.size())) != 1) {
    return absl::InternalError("cannot draw a random nonce (OpenSSL RAND_bytes failed)");
  }
  return nonce;
}

}  // namespace lazyram
