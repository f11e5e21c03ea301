// lazyramd: serve guest RAM files to lazy mounts, or mount them.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "absl/synchronization/mutex.h"
#include "daemon/cmd/commands.h"

int main(int argc, char** argv) {
  // Debian's Abseil checks every Mutex acquisition for lock-order cycles
  // (a graph lookup per lock); the fault path takes several locks per
  // READ. The unit tests keep the check.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  using lazyram::MountOptions;
  using lazyram::ServeOptions;
  CLI::App app{
      "lazyramd - guest RAM as files that fill themselves lazily.\n"
      "  lazyramd serve: serve RAM files to lazy mounts over TCP.\n"
      "  lazyramd mount: mount a FUSE filesystem with one file per region, whose pages come\n"
      "                  on demand from a page server (or, without --source, start as zero)."};
  app.require_subcommand(1);

  ServeOptions serve;
  CLI::App* serve_cmd =
      app.add_subcommand("serve", "Serve RAM files read-only over the page protocol");
  serve_cmd->add_option("--listen", serve.listen, "HOST:PORT to listen on (port 0: any free port)")
      ->required();
  serve_cmd
      ->add_option("--region", serve.regions,
                   "NAME=PATH: serve file PATH as region NAME (repeatable)")
      ->required()
      ->take_all();
  serve_cmd->add_option("--auth-key-file", serve.auth_key_file,
                        "FILE holding a shared secret (>= 16 bytes, mode 0600): clients must prove "
                        "they hold it before they see any region (mount --auth-key-file)");
  serve_cmd->add_flag("--insecure", serve.insecure,
                      "Allow listening on a non-loopback address without --auth-key-file");
  serve_cmd
      ->add_option("--max-connections", serve.max_connections,
                   "Clients served at once; one more gets a BUSY error and is closed")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  serve_cmd
      ->add_option("--max-inflight", serve.max_inflight,
                   "Requests per connection being read or replied to; further ones wait")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  serve_cmd
      ->add_option("--handshake-timeout", serve.handshake_timeout_seconds,
                   "SECONDS a client has to complete the handshake before it is dropped")
      ->check(CLI::Range(0.001, 86400.0))
      ->capture_default_str();

  MountOptions mount;
  CLI::App* mount_cmd = app.add_subcommand("mount", "Mount regions as files at MOUNTPOINT");
  mount_cmd->add_option("MOUNTPOINT", mount.mountpoint, "An existing directory")->required();
  std::vector<std::string> sources;
  mount_cmd
      ->add_option("--source", sources,
                   "tcp://HOST:PORT of a page server, file://PATH of a raw RAM file (or a "
                   "directory of them), or qemu-stream://PATH of a QEMU migration stream or "
                   "savevm file; without it the mount starts empty. Repeat it to name "
                   "replicas of the same image (tcp:// only): the mount fails over between "
                   "them")
      ->allow_extra_args(false);  // one URL per --source, as with a single source
  mount_cmd
      ->add_option("--fetch-timeout", mount.fetch_timeout,
                   "SECONDS: fail a read (EIO; SIGBUS for a mapped page) or a prefetch whose "
                   "pages the page server has not delivered within this time (default: wait "
                   "forever, reconnecting)")
      ->check(CLI::PositiveNumber);
  mount_cmd
      ->add_option("--max-fetch-memory", mount.max_fetch_memory_mib,
                   "MiB: cap on the memory the fetcher holds for replies in flight (receive "
                   "buffers included); background pulls wait at the cap")
      ->capture_default_str();
  mount_cmd
      ->add_option("--store", mount.store,
                   "Where local pages live: mem (a memfd per region) or a DIRECTORY (a sparse file "
                   "per region, with page states that survive the daemon: a new mount of the "
                   "same source resumes; see docs/store.md)")
      ->capture_default_str();
  mount_cmd->add_option("--control", mount.control,
                        "Control socket path (default /run/lazyram/<mountpoint name>.sock)");
  mount_cmd->add_option(
      "--log", mount.log,
      "Log file when running in the background (default: the control socket path with .log)");
  CLI::Option* prefetch_opt =
      mount_cmd
          ->add_option("--prefetch", mount.prefetch,
                       "on: pull every page in the background, then detach the source; off: fetch "
                       "only what is read (the default for file:// and qemu-stream:// sources)")
          ->check(CLI::IsMember({"on", "off"}))
          ->capture_default_str();
  mount_cmd->add_flag("--read-only", mount.read_only,
                      "Refuse every write (EROFS): for inspecting a dead VM's memory; the source "
                      "is never written and the store holds only what was read");
  mount_cmd
      ->add_option("--machine", mount.machine,
                   "pc or q35: the guest's memory layout, for the views/ folder (default: the "
                   "machine a qemu-stream records)")
      ->check(CLI::IsMember({"pc", "q35"}));
  mount_cmd
      ->add_option("--checkpoint-interval", mount.checkpoint_interval,
                   "With --store DIR: every SECONDS, make the store's pages and page states "
                   "durable (fdatasync) and mark regions that stayed idle clean, so that they "
                   "survive a power loss; 0: only at a clean shutdown. Page states survive a "
                   "killed daemon without it; see docs/store.md")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  mount_cmd
      ->add_option("--pull-yield", mount.pull_yield_ms,
                   "MS: after a guest faults on an absent page, the background pull keeps one "
                   "small fetch in flight for this long, leaving CPUs and the link to faults; "
                   "0: the pull always runs at full speed (docs/performance.md)")
      ->check(CLI::Range(0.0, 60000.0))
      ->capture_default_str();
  mount_cmd->add_flag("--foreground", mount.foreground, "Stay attached; unmount on SIGINT/SIGTERM");
  mount_cmd->add_flag("--allow-other", mount.allow_other, "Let other users access the mount");
  mount_cmd->add_option("--auth-key-file", mount.auth_key_file,
                        "FILE holding the page server's shared secret (>= 16 bytes, mode 0600); "
                        "the server must prove it holds it too");
  mount_cmd
      ->add_option("--push", mount.push,
                   "on: put the pages the background pull fetched into the kernel's page cache, "
                   "so a first touch needs no FUSE READ (costs page cache as large as the pulled "
                   "data); off: every first touch is a READ")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  mount_cmd
      ->add_option("--passthrough", mount.passthrough,
                   "on: open a region whose every page is local (always so without a source) "
                   "in FUSE passthrough mode, so the kernel maps and writes its memory store "
                   "directly, at tmpfs speed (--store mem only; needs CAP_SYS_ADMIN, else the "
                   "mount stays cached); off: every file stays in cached mode, each page and "
                   "write through the daemon. See docs/performance.md")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // CLI11 reports a word that names no subcommand as a missing one.
    if (app.get_subcommands().empty() && !app.remaining().empty()) {
      lazyram::PrintError("unknown subcommand '" + app.remaining().front() +
                          "' (see lazyramd --help)");
    } else {
      lazyram::PrintError(std::string(e.what()) + " (see lazyramd --help)");
    }
    return 2;
  }
  mount.prefetch_given = prefetch_opt->count() > 0;
  if (!sources.empty()) {
    mount.source = sources.front();
    mount.replicas.assign(sources.begin() + 1, sources.end());
  }
  if (*serve_cmd) return lazyram::RunServe(serve);
  return lazyram::RunMount(mount);
}
