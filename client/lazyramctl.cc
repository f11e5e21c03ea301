// lazyramctl: the command-line front end of lazyramd's control socket.
// Each subcommand is one control request, except `wait`, which polls
// `status` until every region is local.
//
// Exit status: 0 success; 1 any failure, including a `wait` timeout; 2 a
// usage error. Every failure is exactly one "lazyramctl: ..." line on stderr.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/control_client.h"
#include "client/status_format.h"

namespace lazyram::client {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

// A status reply is small and cheap; a daemon slower than this is stuck.
constexpr absl::Duration kStatusTimeout = absl::Seconds(10);
constexpr absl::Duration kWaitPollInterval = absl::Milliseconds(200);
// Several polls wide, so the rate is smooth, yet short enough to follow
// the fetch speeding up or stalling.
constexpr absl::Duration kRateWindow = absl::Seconds(2);
// Every poll in `wait` gets at least this long to answer, even when the
// deadline is nearer, so that `wait --timeout 0` still asks once.
constexpr absl::Duration kMinPollTimeout = absl::Seconds(1);

void PrintError(absl::string_view message) {
  // One line per error, whatever the daemon put in its message.
  std::cerr << "lazyramctl: " << absl::StrReplaceAll(message, {{"\n", " "}}) << std::endl;
}

// Local-byte samples over the last kRateWindow, for a rate that neither
// jumps with each 200 ms poll nor averages over the whole wait.
class RateWindow {
 public:
  void Add(Clock::time_point now, uint64_t bytes) {
    samples_.emplace_back(now, bytes);
    // Keep one sample at or before the window's start so the rate always
    // spans the full window once there is enough history.
    const auto window_start = now - absl::ToChronoNanoseconds(kRateWindow);
    while (samples_.size() > 2 && samples_[1].first <= window_start) samples_.pop_front();
  }

  double BytesPerSecond() const {
    if (samples_.size() < 2) return 0;
    const auto& [t0, b0] = samples_.front();
    const auto& [t1, b1] = samples_.back();
    double seconds = std::chrono::duration<double>(t1 - t0).count();
    if (seconds <= 0 || b1 <= b0) return 0;
    return static_cast<double>(b1 - b0) / seconds;
  }

 private:
  std::deque<std::pair<Clock::time_point, uint64_t>> samples_;
};

// Redraws one line on stderr in place. The destructor ends the line, so an
// error printed afterwards starts on a fresh one.
class ProgressLine {
 public:
  explicit ProgressLine(bool enabled) : enabled_(enabled) {}
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;
  ~ProgressLine() {
    if (drawn_) std::fputc('\n', stderr);
  }

  void Draw(const std::string& line) {
    if (!enabled_) return;
    // Blank out what a longer previous line left behind.
    std::string pad(last_size_ > line.size() ? last_size_ - line.size() : 0, ' ');
    std::fprintf(stderr, "\r%s%s", line.c_str(), pad.c_str());
    std::fflush(stderr);
    last_size_ = line.size();
    drawn_ = true;
  }

 private:
  const bool enabled_;
  bool drawn_ = false;
  size_t last_size_ = 0;
};

absl::Status FlushStdout() {
  std::cout.flush();
  if (!std::cout) return absl::InternalError("cannot write to standard output");
  return absl::OkStatus();
}

absl::Status RunStatus(const std::string& control, bool as_json) {
  absl::StatusOr<json> reply = ControlClient::Call(control, {{"cmd", "status"}}, kStatusTimeout);
  if (!reply.ok()) return reply.status();
  if (as_json) {
    reply->erase("ok");
    std::cout << reply->dump(2) << "\n";
    return FlushStdout();
  }
  absl::StatusOr<DaemonStatus> status = ParseStatusReply(*reply);
  if (!status.ok()) return status.status();
  std::cout << FormatStatusTable(*status);
  return FlushStdout();
}

absl::Status RunWait(const std::string& control, std::optional<double> timeout_seconds,
                     bool show_progress) {
  const absl::Duration timeout =
      timeout_seconds ? absl::Seconds(*timeout_seconds) : absl::InfiniteDuration();
  const Clock::time_point start = Clock::now();
  auto elapsed = [start] { return absl::FromChrono(Clock::now() - start); };
  auto timed_out = [&](const DaemonStatus* last) {
    if (last == nullptr) {
      return absl::DeadlineExceededError(absl::StrCat(
          "timed out after ", *timeout_seconds, " s: lazyramd at ", control, " did not answer"));
    }
    return absl::DeadlineExceededError(absl::StrCat("timed out after ", *timeout_seconds,
                                                    " s: ", LocalBytes(*last), " of ",
                                                    TotalBytes(*last), " bytes local"));
  };

  ProgressLine progress(show_progress);
  RateWindow rate;
  std::optional<DaemonStatus> last;
  for (;;) {
    absl::Duration call_timeout = std::max(timeout - elapsed(), kMinPollTimeout);
    call_timeout = std::min(call_timeout, kStatusTimeout);
    absl::StatusOr<json> reply = ControlClient::Call(control, {{"cmd", "status"}}, call_timeout);
    if (!reply.ok()) {
      if (absl::IsDeadlineExceeded(reply.status()) && elapsed() >= timeout) {
        return timed_out(last ? &*last : nullptr);
      }
      return reply.status();
    }
    absl::StatusOr<DaemonStatus> status = ParseStatusReply(*reply);
    if (!status.ok()) return status.status();
    last = *std::move(status);

    const uint64_t local = LocalBytes(*last);
    rate.Add(Clock::now(), local);
    progress.Draw(FormatProgressLine(local, TotalBytes(*last), rate.BytesPerSecond()));
    if (IsComplete(*last)) return absl::OkStatus();

    absl::Duration remaining = timeout - elapsed();
    if (remaining <= absl::ZeroDuration()) return timed_out(&*last);
    std::this_thread::sleep_for(absl::ToChronoNanoseconds(std::min(kWaitPollInterval, remaining)));
  }
}

absl::Status RunPrefetch(const std::string& control, const std::string& region,
                         const std::string& offset, const std::string& length) {
  json request = {{"cmd", "prefetch"}, {"region", region}};
  if (!offset.empty()) {
    // The parser's validator has accepted both already.
    absl::StatusOr<uint64_t> off = ParseByteSize(offset);
    absl::StatusOr<uint64_t> len = ParseByteSize(length);
    if (!off.ok()) return off.status();
    if (!len.ok()) return len.status();
    request["offset"] = *off;
    request["length"] = *len;
  }
  // No timeout: the daemon answers only once the whole range is local.
  return ControlClient::Call(control, request).status();
}

// `hash NAME`: one blocking request; with --progress, a request that starts
// the run and then polls for progress until it is done.
absl::Status RunHash(const std::string& control, const std::string& region, bool show_progress) {
  json request = {{"cmd", "hash"}, {"region", region}};
  absl::StatusOr<json> reply;
  if (!show_progress) {
    reply = ControlClient::Call(control, request);
  } else {
    ProgressLine progress(true);
    RateWindow rate;
    request["wait"] = false;
    reply = ControlClient::Call(control, request, kStatusTimeout);
    request["poll"] = true;
    while (reply.ok() && reply->value("running", false)) {
      const uint64_t done = reply->value("bytes_done", uint64_t{0});
      rate.Add(Clock::now(), done);
      progress.Draw(FormatProgressLine(done, reply->value("bytes_total", uint64_t{0}),
                                       rate.BytesPerSecond()));
      std::this_thread::sleep_for(absl::ToChronoNanoseconds(kWaitPollInterval));
      reply = ControlClient::Call(control, request, kStatusTimeout);
    }
    if (reply.ok()) {
      const uint64_t total = reply->value("bytes_total", uint64_t{0});
      progress.Draw(FormatProgressLine(total, total, rate.BytesPerSecond()));
    }
  }
  if (!reply.ok()) return reply.status();
  auto sha = reply->find("sha256");
  if (sha == reply->end() || !sha->is_string()) {
    return absl::InternalError("malformed reply from daemon: no \"sha256\"");
  }
  // sha256sum's format.
  std::cout << sha->get<std::string>() << "  " << region << "\n";
  return FlushStdout();
}

absl::Status RunUnmount(const std::string& control) {
  return ControlClient::Call(control, {{"cmd", "unmount"}}).status();
}

CLI::Validator ByteSizeValidator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        absl::StatusOr<uint64_t> size = ParseByteSize(text);
        return size.ok() ? std::string() : std::string(size.status().message());
      },
      /*validator_desc=*/"", "byte size");
}

CLI::Validator SecondsValidator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double seconds = 0;
        if (!CLI::detail::lexical_cast(text, seconds) || !(seconds >= 0) || seconds > 1e12) {
          return absl::StrCat("invalid timeout \"", text,
                              "\": expected a non-negative number of seconds");
        }
        return std::string();
      },
      /*validator_desc=*/"", "seconds");
}

// CLI11's message plus where to read more. --control and unknown
// subcommands are the root's business, so those point at the root's help.
std::string UsageErrorMessage(const CLI::App& app, const CLI::ParseError& e) {
  std::vector<std::string> extra = app.remaining();
  if (app.get_subcommands().empty() && !extra.empty()) {
    return absl::StrCat("unknown subcommand \"", extra.front(), "\" (see 'lazyramctl --help')");
  }
  std::string help = "lazyramctl --help";
  if (!app.get_subcommands().empty() && !absl::StrContains(e.what(), "--control")) {
    help = absl::StrCat("lazyramctl ", app.get_subcommands().front()->get_name(), " --help");
  }
  return absl::StrCat(e.what(), " (see '", help, "')");
}

int Main(int argc, char** argv) {
  CLI::App app("Controls a running lazyramd through its control socket.", "lazyramctl");
  // Subcommands inherit the footer, so their --help also names --control.
  app.footer(
      "Every subcommand needs --control PATH, given before or after it.\n"
      "Exit status: 0 on success, 1 on failure or timeout, 2 on usage errors.");
  app.require_subcommand(1);
  // Lets --control also come after the subcommand.
  app.fallthrough();

  std::string control;
  app.add_option("--control", control, "Control socket of the daemon (lazyramd --control PATH)")
      ->required()
      ->type_name("PATH");

  CLI::App* status_cmd =
      app.add_subcommand("status", "Show the page source state and each region's page counts");
  bool as_json = false;
  status_cmd->add_flag("--json", as_json,
                       "Print the daemon's status object as indented JSON instead of a table");

  CLI::App* wait_cmd = app.add_subcommand(
      "wait", "Block until every region is fully local (every page fetched or known zero)");
  double timeout_seconds = 0;
  CLI::Option* timeout_opt =
      wait_cmd
          ->add_option("--timeout", timeout_seconds,
                       "Give up after SECONDS (fractions allowed) and exit 1; default: no limit")
          ->type_name("SECONDS")
          ->check(SecondsValidator());
  bool show_progress = false;
  wait_cmd->add_flag("--progress", show_progress,
                     "Draw a progress bar with rate and ETA on stderr while waiting");

  CLI::App* prefetch_cmd = app.add_subcommand(
      "prefetch",
      "Fetch a region, or the byte range OFFSET..OFFSET+LENGTH of it, and return once it is "
      "local");
  std::string region, offset, length;
  prefetch_cmd->add_option("NAME", region, "Region name, as listed by status")->required();
  CLI::Option* offset_opt =
      prefetch_cmd
          ->add_option("OFFSET", offset,
                       "Start of the range in bytes: 4096, 0x1000, 64K, 2MiB, 1G ...")
          ->type_name("BYTES")
          ->check(ByteSizeValidator());
  CLI::Option* length_opt =
      prefetch_cmd->add_option("LENGTH", length, "Length of the range in bytes, same forms")
          ->type_name("BYTES")
          ->check(ByteSizeValidator());
  offset_opt->needs(length_opt);

  CLI::App* hash_cmd = app.add_subcommand(
      "hash",
      "Compute the SHA-256 of a region (reading all of it, fetching what is absent) and print it "
      "as sha256sum does; views/manifest.json shows it afterwards");
  std::string hash_region;
  hash_cmd->add_option("NAME", hash_region, "Region name, as listed by status")->required();
  bool hash_progress = false;
  hash_cmd->add_flag("--progress", hash_progress,
                     "Draw a progress bar with rate and ETA on stderr while hashing");

  CLI::App* unmount_cmd =
      app.add_subcommand("unmount", "Unmount the filesystem; lazyramd then exits");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    PrintError(UsageErrorMessage(app, e));
    return 2;
  }

  absl::Status result;
  if (status_cmd->parsed()) {
    result = RunStatus(control, as_json);
  } else if (wait_cmd->parsed()) {
    result =
        RunWait(control, timeout_opt->count() > 0 ? std::optional(timeout_seconds) : std::nullopt,
                show_progress);
  } else if (prefetch_cmd->parsed()) {
    result = RunPrefetch(control, region, offset, length);
  } else if (hash_cmd->parsed()) {
    result = RunHash(control, hash_region, hash_progress);
  } else if (unmount_cmd->parsed()) {
    result = RunUnmount(control);
  }
  if (!result.ok()) {
    PrintError(result.message());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace lazyram::client

int main(int argc, char** argv) {
  try {
    return lazyram::client::Main(argc, argv);
  } catch (const std::exception& e) {
    lazyram::client::PrintError(absl::StrCat("internal error: ", e.what()));
    return 1;
  }
}
