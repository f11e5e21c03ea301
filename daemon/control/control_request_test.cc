#include "daemon/control/control_request.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/status.h"
#include "daemon/control/control_server.h"

namespace lazyram {
namespace {

// Answers every request with `reply` and remembers what it was asked.
class FakeHandler : public ControlHandler {
 public:
  explicit FakeHandler(nlohmann::json reply) : reply_(std::move(reply)) {}
  nlohmann::json Handle(const nlohmann::json& request) override {
    ++calls;
    last = request;
    return reply_;
  }
  int calls = 0;
  nlohmann::json last;

 private:
  nlohmann::json reply_;
};

nlohmann::json ParseReply(const std::string& line) {
  EXPECT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  return nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
}

TEST(ControlRequestTest, PassesAnObjectToTheHandler) {
  FakeHandler handler(OkReply({{"x", 1}}));
  nlohmann::json reply = ParseReply(AnswerControlRequest("{\"cmd\":\"status\"}\n", &handler));
  EXPECT_EQ(handler.calls, 1);
  EXPECT_EQ(handler.last["cmd"], "status");
  EXPECT_EQ(reply["ok"], true);
  EXPECT_EQ(reply["x"], 1);
}

TEST(ControlRequestTest, OnlyTheFirstLineCounts) {
  FakeHandler handler(OkReply());
  ParseReply(AnswerControlRequest("{\"cmd\":\"a\"}\n{\"cmd\":\"b\"}\ngarbage", &handler));
  EXPECT_EQ(handler.calls, 1);
  EXPECT_EQ(handler.last["cmd"], "a");
}

TEST(ControlRequestTest, RefusesWhatIsNotAJsonObject) {
  FakeHandler handler(OkReply());
  for (const char* bad :
       {"", "\n", "not json\n", "[1,2]\n", "\"cmd\"\n", "{\"cmd\":\n", "{\"a\":\"\xff\"}\n"}) {
    nlohmann::json reply = ParseReply(AnswerControlRequest(bad, &handler));
    EXPECT_EQ(reply["ok"], false) << bad;
    EXPECT_EQ(reply["code"], "INVALID_ARGUMENT") << bad;
    EXPECT_EQ(reply["error"], "request is not a JSON object") << bad;
  }
  EXPECT_EQ(handler.calls, 0);
}

TEST(ControlRequestTest, RefusesARequestOverTheLimit) {
  FakeHandler handler(OkReply());
  const std::string big = "{\"cmd\":\"" + std::string(kMaxControlRequest, 'x') + "\"}\n";
  nlohmann::json reply = ParseReply(AnswerControlRequest(big, &handler));
  EXPECT_EQ(reply["ok"], false);
  EXPECT_EQ(reply["code"], "INVALID_ARGUMENT");
  EXPECT_EQ(reply["error"], "request too large");
  EXPECT_EQ(handler.calls, 0);
}

// Found by tests/fuzz/control_fuzzer: a region whose name is not UTF-8 (a
// file a consumer created in a RAM-backing mount, or a page server's
// region) made `status` throw from the JSON serializer, and the uncaught
// exception killed the daemon.
TEST(ControlRequestTest, ARegionNameThatIsNotUtf8DoesNotKillTheDaemon) {
  FakeHandler handler(OkReply({{"regions", {{{"name", "odd\xff\xfe"}}}}}));
  nlohmann::json reply = ParseReply(AnswerControlRequest("{\"cmd\":\"status\"}\n", &handler));
  ASSERT_TRUE(reply.is_object());
  EXPECT_EQ(reply["ok"], true);
  EXPECT_EQ(reply["regions"][0]["name"], "odd\xef\xbf\xbd\xef\xbf\xbd");  // U+FFFD twice
}

TEST(ControlRequestTest, AnErrorAboutANameThatIsNotUtf8IsStillAReply) {
  FakeHandler handler(ErrorReply(absl::NotFoundError("no region named '\xc3'")));
  nlohmann::json reply = ParseReply(AnswerControlRequest("{\"cmd\":\"x\"}\n", &handler));
  EXPECT_EQ(reply["ok"], false);
  EXPECT_EQ(reply["code"], "NOT_FOUND");
}

}  // namespace
}  // namespace lazyram
