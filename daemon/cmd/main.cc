// lazyramd: serve guest RAM files to lazy mounts, or mount them.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "daemon/cmd/commands.h"

int main(int argc, char** argv) {
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
  mount_cmd->add_option("--source", mount.source,
                        "tcp://HOST:PORT of a page server, file://PATH of a raw RAM file (or a "
                        "directory of them), or qemu-stream://PATH of a QEMU migration stream or "
                        "savevm file; without it the mount starts empty");
  mount_cmd
      ->add_option("--store", mount.store,
                   "Where local pages live: mem (a memfd per region) or a DIRECTORY (a sparse file "
                   "per region)")
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
  if (*serve_cmd) return lazyram::RunServe(serve);
  return lazyram::RunMount(mount);
}
