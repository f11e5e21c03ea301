#include "daemon/protocol/auth_key.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"

namespace lazyram {
namespace {

using protocol::Nonce;
using protocol::Proof;

class KeyFileTest : public ::testing::Test {
 protected:
  KeyFileTest() {
    char tmpl[] = "/tmp/lazyram-auth-key-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) std::abort();
    dir_ = tmpl;
  }
  ~KeyFileTest() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& content, mode_t mode = 0600) {
    const std::string path = dir_ + "/key" + std::to_string(next_++);
    std::ofstream(path, std::ios::binary) << content;
    chmod(path.c_str(), mode);
    return path;
  }

  std::string dir_;
  int next_ = 0;
};

Nonce MakeNonce(uint8_t seed) {
  Nonce n;
  for (size_t i = 0; i < n.size(); ++i) n[i] = static_cast<uint8_t>(seed + i);
  return n;
}

TEST_F(KeyFileTest, LoadsAGoodKeyAndStripsOneTrailingNewline) {
  const std::string secret = "0123456789abcdef0123";
  absl::StatusOr<std::shared_ptr<const AuthKey>> from_file =
      AuthKey::LoadFile(Write(secret + "\n"));
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  absl::StatusOr<std::shared_ptr<const AuthKey>> direct = AuthKey::FromSecret(secret);
  ASSERT_TRUE(direct.ok());
  const Nonce s = MakeNonce(1), c = MakeNonce(2);
  absl::StatusOr<Proof> proof = (*from_file)->Prove(AuthKey::Role::kClient, s, c);
  ASSERT_TRUE(proof.ok());
  EXPECT_TRUE((*direct)->Verify(AuthKey::Role::kClient, s, c, *proof));
  // Only one newline goes: the second is part of the key.
  absl::StatusOr<std::shared_ptr<const AuthKey>> two = AuthKey::LoadFile(Write(secret + "\n\n"));
  ASSERT_TRUE(two.ok());
  EXPECT_FALSE((*two)->Verify(AuthKey::Role::kClient, s, c, *proof));
}

TEST_F(KeyFileTest, RefusesAKeyOthersCanRead) {
  for (mode_t mode : {0644, 0640, 0604, 0660, 0601}) {
    const std::string path = Write("0123456789abcdef0123", mode);
    absl::StatusOr<std::shared_ptr<const AuthKey>> key = AuthKey::LoadFile(path);
    ASSERT_FALSE(key.ok()) << std::oct << mode;
    EXPECT_TRUE(absl::IsPermissionDenied(key.status()));
    EXPECT_TRUE(absl::StrContains(key.status().message(), path));
    EXPECT_TRUE(absl::StrContains(key.status().message(), "chmod 600"));
  }
  EXPECT_TRUE(AuthKey::LoadFile(Write("0123456789abcdef0123", 0400)).ok());
}

TEST_F(KeyFileTest, RefusesShortEmptyMissingAndOversizedKeys) {
  absl::StatusOr<std::shared_ptr<const AuthKey>> key = AuthKey::LoadFile(Write("short-key\n"));
  ASSERT_FALSE(key.ok());
  EXPECT_TRUE(absl::StrContains(key.status().message(), "at least 16")) << key.status();
  // 15 bytes plus the stripped newline is still too short.
  EXPECT_FALSE(AuthKey::LoadFile(Write(std::string(15, 'k') + "\n")).ok());
  EXPECT_TRUE(AuthKey::LoadFile(Write(std::string(16, 'k') + "\n")).ok());
  key = AuthKey::LoadFile(Write(""));
  ASSERT_FALSE(key.ok());
  EXPECT_TRUE(absl::StrContains(key.status().message(), "empty")) << key.status();
  key = AuthKey::LoadFile(Write("\n"));
  EXPECT_FALSE(key.ok());
  key = AuthKey::LoadFile(dir_ + "/missing");
  ASSERT_FALSE(key.ok());
  EXPECT_TRUE(absl::IsNotFound(key.status())) << key.status();
  EXPECT_FALSE(AuthKey::LoadFile(Write(std::string(AuthKey::kMaxSize + 1, 'k'))).ok());
  EXPECT_TRUE(AuthKey::LoadFile(Write(std::string(AuthKey::kMaxSize, 'k'))).ok());
  EXPECT_FALSE(AuthKey::LoadFile(dir_).ok());  // a directory
}

TEST_F(KeyFileTest, ErrorsNeverShowTheKey) {
  const std::string secret = "SECRET-abc";  // too short, so it is refused
  absl::StatusOr<std::shared_ptr<const AuthKey>> key = AuthKey::LoadFile(Write(secret));
  ASSERT_FALSE(key.ok());
  EXPECT_FALSE(absl::StrContains(key.status().message(), secret));
  const std::string good = "SECRET-0123456789";
  key = AuthKey::LoadFile(Write(good, 0644));
  ASSERT_FALSE(key.ok());
  EXPECT_FALSE(absl::StrContains(key.status().message(), good));
}

TEST(AuthKeyTest, ProofIsHmacSha256OverLabelAndNonces) {
  const std::string secret = "a shared secret of some length";
  std::shared_ptr<const AuthKey> key = *AuthKey::FromSecret(secret);
  const Nonce s = MakeNonce(10), c = MakeNonce(20);
  std::string message("lazyram v1 client proof", sizeof "lazyram v1 client proof");
  message.append(reinterpret_cast<const char*>(s.data()), s.size());
  message.append(reinterpret_cast<const char*>(c.data()), c.size());
  Proof want;
  unsigned int len = 0;
  ASSERT_NE(
      HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
           reinterpret_cast<const uint8_t*>(message.data()), message.size(), want.data(), &len),
      nullptr);
  absl::StatusOr<Proof> proof = key->Prove(AuthKey::Role::kClient, s, c);
  ASSERT_TRUE(proof.ok());
  EXPECT_EQ(*proof, want);
}

TEST(AuthKeyTest, ProofsAreBoundToRoleNoncesAndKey) {
  std::shared_ptr<const AuthKey> key = *AuthKey::FromSecret("0123456789abcdef");
  std::shared_ptr<const AuthKey> other = *AuthKey::FromSecret("0123456789abcdeF");
  const Nonce s = MakeNonce(1), c = MakeNonce(2);
  const Proof client = *key->Prove(AuthKey::Role::kClient, s, c);
  const Proof server = *key->Prove(AuthKey::Role::kServer, s, c);
  EXPECT_NE(client, server);  // a reflected proof is not the other side's
  EXPECT_TRUE(key->Verify(AuthKey::Role::kClient, s, c, client));
  EXPECT_TRUE(key->Verify(AuthKey::Role::kServer, s, c, server));
  EXPECT_FALSE(key->Verify(AuthKey::Role::kServer, s, c, client));
  EXPECT_FALSE(key->Verify(AuthKey::Role::kClient, s, c, server));
  EXPECT_FALSE(key->Verify(AuthKey::Role::kClient, c, s, client));  // nonces swapped
  EXPECT_FALSE(key->Verify(AuthKey::Role::kClient, s, MakeNonce(3), client));
  EXPECT_FALSE(other->Verify(AuthKey::Role::kClient, s, c, client));
  Proof flipped = client;
  flipped[31] ^= 1;
  EXPECT_FALSE(key->Verify(AuthKey::Role::kClient, s, c, flipped));
}

TEST(AuthKeyTest, NoncesAreFresh) {
  absl::StatusOr<Nonce> a = RandomNonce();
  absl::StatusOr<Nonce> b = RandomNonce();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
}

}  // namespace
}  // namespace lazyram
