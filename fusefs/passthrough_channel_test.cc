#include "fusefs/passthrough_channel.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "fusefs/fuse_passthrough_abi.h"

namespace lazyram::fusefs {
namespace {

// A request as the kernel writes it: header, then the opcode's argument.
template <typename Arg>
std::vector<char> Request(uint32_t opcode, uint64_t unique, const Arg& arg) {
  fuse_in_header header{};
  header.len = sizeof header + sizeof arg;
  header.opcode = opcode;
  header.unique = unique;
  std::vector<char> buf(sizeof header + sizeof arg);
  std::memcpy(buf.data(), &header, sizeof header);
  std::memcpy(buf.data() + sizeof header, &arg, sizeof arg);
  return buf;
}

abi::InitIn KernelInit(bool offers_passthrough) {
  abi::InitIn in{};
  in.major = 7;
  in.minor = 42;
  in.flags = static_cast<uint32_t>(abi::kInitExt);
  in.flags2 = offers_passthrough ? abi::kPassthroughFlags2 : 0;
  return in;
}

// A reply as libfuse lays it out: the header in iov[0], the argument in
// iov[1].
struct Reply {
  fuse_out_header header{};
  std::vector<char> arg;
  iovec iov[2];

  Reply(uint64_t unique, size_t arg_size, int error = 0) : arg(arg_size) {
    header.unique = unique;
    header.error = error;
    iov[0] = {&header, sizeof header};
    iov[1] = {arg.data(), arg.size()};
  }
  template <typename T>
  T At(size_t offset) const {
    T value;
    std::memcpy(&value, arg.data() + offset, sizeof value);
    return value;
  }
  template <typename T>
  void Put(size_t offset, const T& value) {
    std::memcpy(arg.data() + offset, &value, sizeof value);
  }
};

TEST(PassthroughChannelTest, InitReplyAsksForPassthroughWhenOffered) {
  PassthroughChannel channel(-1);
  const std::vector<char> init = Request(abi::kOpInit, 2, KernelInit(true));
  channel.InspectRequest(init.data(), init.size());
  Reply reply(2, sizeof(abi::InitOut));
  abi::InitOut out{};
  out.major = 7;
  out.minor = 38;
  out.max_write = 1 << 20;
  reply.Put(0, out);
  channel.PatchReply(reply.iov, 2);
  const auto patched = reply.At<abi::InitOut>(0);
  EXPECT_TRUE(patched.flags & abi::kInitExt);
  EXPECT_EQ(patched.flags2 & abi::kPassthroughFlags2, abi::kPassthroughFlags2);
  EXPECT_EQ(patched.max_stack_depth, 1u);
  EXPECT_EQ(patched.max_write, 1u << 20);  // the rest untouched
  EXPECT_TRUE(channel.negotiated());
  EXPECT_EQ(channel.refusal(), "");
}

TEST(PassthroughChannelTest, NoPassthroughWhenTheKernelDoesNotOfferIt) {
  PassthroughChannel channel(-1);
  const std::vector<char> init = Request(abi::kOpInit, 2, KernelInit(false));
  channel.InspectRequest(init.data(), init.size());
  Reply reply(2, sizeof(abi::InitOut));
  channel.PatchReply(reply.iov, 2);
  EXPECT_EQ(reply.At<abi::InitOut>(0).flags2, 0u);
  EXPECT_EQ(reply.At<abi::InitOut>(0).max_stack_depth, 0u);
  EXPECT_FALSE(channel.negotiated());
  EXPECT_NE(channel.refusal(), "");
}

TEST(PassthroughChannelTest, NoPassthroughWithTheWritebackCache) {
  PassthroughChannel channel(-1);
  const std::vector<char> init = Request(abi::kOpInit, 2, KernelInit(true));
  channel.InspectRequest(init.data(), init.size());
  Reply reply(2, sizeof(abi::InitOut));
  abi::InitOut out{};
  out.flags = static_cast<uint32_t>(abi::kWritebackCache);
  reply.Put(0, out);
  channel.PatchReply(reply.iov, 2);
  EXPECT_EQ(reply.At<abi::InitOut>(0).flags2, 0u);
  EXPECT_FALSE(channel.negotiated());
  EXPECT_NE(channel.refusal().find("writeback"), std::string::npos);
}

TEST(PassthroughChannelTest, MarkedOpenReplyCarriesTheBackingId) {
  PassthroughChannel channel(-1);
  const std::vector<char> open = Request(abi::kOpOpen, 10, fuse_open_in{});
  channel.InspectRequest(open.data(), open.size());
  channel.MarkOpenReply(3);
  // A reply to another request (a READ answered from this thread) is left
  // alone and does not use up the mark.
  Reply other(9, sizeof(abi::OpenOut));
  channel.PatchReply(other.iov, 2);
  EXPECT_EQ(other.At<abi::OpenOut>(0).open_flags, 0u);

  Reply reply(10, sizeof(abi::OpenOut));
  abi::OpenOut out{};
  out.fh = 42;
  out.open_flags = abi::kOpenKeepCache;
  reply.Put(0, out);
  channel.PatchReply(reply.iov, 2);
  const auto patched = reply.At<abi::OpenOut>(0);
  EXPECT_EQ(patched.fh, 42u);
  EXPECT_EQ(patched.open_flags, abi::kOpenPassthrough);
  EXPECT_EQ(patched.backing_id, 3);
  EXPECT_TRUE(channel.TakeMarkApplied());
  EXPECT_FALSE(channel.TakeMarkApplied());

  // Used up: the next reply with the same layout is not touched.
  Reply again(10, sizeof(abi::OpenOut));
  channel.PatchReply(again.iov, 2);
  EXPECT_EQ(again.At<abi::OpenOut>(0).open_flags, 0u);
}

TEST(PassthroughChannelTest, CreateReplyPatchesTheOpenOutAfterTheEntry) {
  PassthroughChannel channel(-1);
  const std::vector<char> create = Request(abi::kOpCreate, 12, fuse_create_in{});
  channel.InspectRequest(create.data(), create.size());
  channel.MarkOpenReply(5);
  Reply reply(12, abi::kCreateReplySize);
  fuse_entry_out entry{};
  entry.nodeid = 7;
  reply.Put(0, entry);
  channel.PatchReply(reply.iov, 2);
  EXPECT_EQ(reply.At<fuse_entry_out>(0).nodeid, 7u);
  const auto open = reply.At<abi::OpenOut>(sizeof(fuse_entry_out));
  EXPECT_EQ(open.open_flags, abi::kOpenPassthrough);
  EXPECT_EQ(open.backing_id, 5);
  EXPECT_TRUE(channel.TakeMarkApplied());
}

TEST(PassthroughChannelTest, ErrorRepliesAndOtherRequestsAreNotMarked) {
  PassthroughChannel channel(-1);
  const std::vector<char> open = Request(abi::kOpOpen, 20, fuse_open_in{});
  channel.InspectRequest(open.data(), open.size());
  channel.MarkOpenReply(3);
  Reply error(20, 0, -EROFS);
  channel.PatchReply(error.iov, 1);
  EXPECT_FALSE(channel.TakeMarkApplied());

  // A mark while handling anything but OPEN or CREATE does nothing.
  const std::vector<char> read = Request(15u, 21, fuse_read_in{});
  channel.InspectRequest(read.data(), read.size());
  channel.MarkOpenReply(3);
  Reply reply(21, sizeof(abi::OpenOut));
  channel.PatchReply(reply.iov, 2);
  EXPECT_EQ(reply.At<abi::OpenOut>(0).open_flags, 0u);
  EXPECT_FALSE(channel.TakeMarkApplied());
}

TEST(PassthroughChannelTest, UnexpectedOpenLayoutIsReportedNotPatched) {
  PassthroughChannel channel(-1);
  const std::vector<char> open = Request(abi::kOpOpen, 30, fuse_open_in{});
  channel.InspectRequest(open.data(), open.size());
  channel.MarkOpenReply(3);
  Reply reply(30, sizeof(abi::OpenOut) + 8);
  channel.PatchReply(reply.iov, 2);
  EXPECT_EQ(reply.At<abi::OpenOut>(0).open_flags, 0u);
  EXPECT_FALSE(channel.TakeMarkApplied());
}

}  // namespace
}  // namespace lazyram::fusefs
