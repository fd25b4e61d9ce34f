# berth: build, install, test.
PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     := $(PREFIX)/bin
LIBEXECDIR := $(PREFIX)/libexec
IMAGEDIR   := $(PREFIX)/lib/berth/images
UNITDIR    ?= $(PREFIX)/lib/systemd/system
DBUSDIR    ?= /usr/share/dbus-1
POLKITDIR  ?= /usr/share/polkit-1
SHAREDIR   := $(PREFIX)/share
MANDIR     := $(SHAREDIR)/man
BUSYBOX    ?= /bin/busybox
CARGO      ?= cargo
PROFILE    ?= release
# cargo's dev profile builds into debug/.
TARGET     := $(or $(CARGO_TARGET_DIR),target)/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))

.PHONY: all build install install-image uninstall check test unit-test integration-test selinux-policy quickstart bench bench-images bench-stats bench-scale bench-network bench-boot bench-exec bench-logs bench-ps bench-push bench-cargo lint

all: build

build:
	$(CARGO) build --profile $(PROFILE) --locked

# Binaries, units (paths rewritten for PREFIX), the D-Bus policy and activation file, and the
# built-in "default" image made from the host's static busybox (no network needed).
install: build install-image
	install -D -m 0755 $(TARGET)/berthd $(DESTDIR)$(BINDIR)/berthd
	install -D -m 0755 $(TARGET)/berthctl $(DESTDIR)$(BINDIR)/berthctl
	install -D -m 0755 $(TARGET)/berth-helper $(DESTDIR)$(LIBEXECDIR)/berth-helper
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	for u in berthd.service berth@.service; do \
	  sed 's|/usr/local/|$(PREFIX)/|g' units/$$u > $(DESTDIR)$(UNITDIR)/$$u && chmod 0644 $(DESTDIR)$(UNITDIR)/$$u; \
	done
	install -D -m 0644 units/org.berth.berth1.service $(DESTDIR)$(DBUSDIR)/system-services/org.berth.berth1.service
	install -D -m 0644 policy/org.berth.berth1.conf $(DESTDIR)$(DBUSDIR)/system.d/org.berth.berth1.conf
	install -D -m 0644 policy/org.berth.berth1.policy $(DESTDIR)$(POLKITDIR)/actions/org.berth.berth1.policy
	install -d -m 0755 $(DESTDIR)$(DBUSDIR)/interfaces
	install -m 0644 dbus-interfaces/*.xml $(DESTDIR)$(DBUSDIR)/interfaces/
	# Completions and man pages, generated from the CLI definition by the built berthctl.
	gen=$$(mktemp -d) && $(TARGET)/berthctl __generate $$gen >/dev/null && \
	  install -D -m 0644 $$gen/completions/bash/berthctl $(DESTDIR)$(SHAREDIR)/bash-completion/completions/berthctl && \
	  install -D -m 0644 $$gen/completions/zsh/_berthctl $(DESTDIR)$(SHAREDIR)/zsh/site-functions/_berthctl && \
	  install -D -m 0644 $$gen/completions/fish/berthctl.fish $(DESTDIR)$(SHAREDIR)/fish/vendor_completions.d/berthctl.fish && \
	  install -d -m 0755 $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8 && \
	  install -m 0644 $$gen/man/*.1 $(DESTDIR)$(MANDIR)/man1/ && \
	  install -m 0644 $$gen/man/berthd.8 $(DESTDIR)$(MANDIR)/man8/; \
	  rc=$$?; rm -rf $$gen; exit $$rc

install-image:
	@if ! [ -x $(BUSYBOX) ] || ldd $(BUSYBOX) >/dev/null 2>&1; then \
	  echo "make: $(BUSYBOX) must be a static busybox (Debian: apt-get install busybox-static)" >&2; exit 1; fi
	rm -rf $(DESTDIR)$(IMAGEDIR)/default.new
	mkdir -p $(DESTDIR)$(IMAGEDIR)/default.new
	cd $(DESTDIR)$(IMAGEDIR)/default.new && \
	  mkdir -p bin sbin usr/bin usr/sbin etc root tmp var dev proc sys run && chmod 1777 tmp && \
	  install -m 0755 $(BUSYBOX) bin/busybox && \
	  for a in $$(bin/busybox --list); do [ -e bin/$$a ] || ln -s busybox bin/$$a; done && \
	  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > etc/passwd && \
	  printf 'root:x:0:\nnogroup:x:65534:\n' > etc/group && \
	  printf 'NAME="berth default image"\nID=berth-busybox\n' > etc/os-release
	rm -rf $(DESTDIR)$(IMAGEDIR)/default
	mv $(DESTDIR)$(IMAGEDIR)/default.new $(DESTDIR)$(IMAGEDIR)/default

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/berthd $(DESTDIR)$(BINDIR)/berthctl $(DESTDIR)$(LIBEXECDIR)/berth-helper
	rm -f $(DESTDIR)$(UNITDIR)/berthd.service $(DESTDIR)$(UNITDIR)/berth@.service
	rm -f $(DESTDIR)$(DBUSDIR)/system-services/org.berth.berth1.service $(DESTDIR)$(DBUSDIR)/system.d/org.berth.berth1.conf
	rm -f $(DESTDIR)$(DBUSDIR)/interfaces/org.berth.berth1.*.xml
	rm -f $(DESTDIR)$(POLKITDIR)/actions/org.berth.berth1.policy
	rm -rf $(DESTDIR)$(IMAGEDIR)/default
	rm -f $(DESTDIR)$(SHAREDIR)/bash-completion/completions/berthctl $(DESTDIR)$(SHAREDIR)/zsh/site-functions/_berthctl $(DESTDIR)$(SHAREDIR)/fish/vendor_completions.d/berthctl.fish
	rm -f $(DESTDIR)$(MANDIR)/man1/berthctl.1 $(DESTDIR)$(MANDIR)/man1/berthctl-*.1 $(DESTDIR)$(MANDIR)/man8/berthd.8

# Quick start: build, install into a disposable systemd host (or this host when PID 1 is
# systemd) and run a first container from the built-in image.
quickstart:
	tests/deps.sh
	$(MAKE) build
	tests/quickstart.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

unit-test:
	$(CARGO) test --locked --release --lib --bins

# The privileged tier: boots a disposable systemd host, installs berth into it and drives it
# through the real bus, CLI and systemctl. Fails (never skips) if the host cannot boot.
integration-test:
	tests/deps.sh
	$(MAKE) build
	tests/run-integration.sh

# The SELinux policy module compiles and links into Debian's policy (no SELinux needed).
selinux-policy:
	tests/selinux-policy.sh

check test: unit-test selinux-policy integration-test

bench: build
	tests/bench/start.sh

# Import/pull throughput and start time from a large image, vs podman and skopeo+umoci.
bench-images: build
	tests/bench/images.sh

# Stats collection with 100 running containers: berthctl stats vs systemd-cgtop vs podman stats,
# and berthd's CPU time per GetStats.
bench-stats: build
	tests/bench/stats.sh

# Start latency with 0, 500 and 1000 detached containers running, beside systemd-run --scope
# (machine.slice and system.slice) at the same points; berthd's per-step timings from its journal.
bench-scale: build
	tests/bench/scale.sh

# What a private network costs at start (bridge minus none) beside nspawn --network-veth and
# podman's default bridge; 100 containers started on one bridge.
bench-network: build
	tests/bench/network.sh

# --boot of an OS tree made from this machine's packages to its default target, and its
# poweroff, beside systemd-nspawn -b of the same tree.
bench-boot: build
	tests/bench/boot.sh

# exec /bin/true into a running container: berthctl exec vs podman exec vs nsenter -a (issue 9).
bench-exec: build
	tests/bench/exec.sh

# 100 MB of lines from a detached container counted back by logs | wc -l, and logs -f latency,
# vs podman (journald and k8s-file) (issue 9).
bench-logs: build
	tests/bench/logs.sh

# ps -a with 1000 created containers: berthctl ps -a vs podman ps -a (issue 12: <= 20 ms).
bench-ps: build
	tests/bench/ps.sh

# The Cargo benchmarks (benches/, harness = false; BENCH_CARGO_FLAGS='--profile dev' to try them
# on a debug build). save and push of a ~200 MB image by berth's engine vs podman (issue 12):
bench-push:
	$(CARGO) bench --locked --bench save_push $(BENCH_CARGO_FLAGS)

# MCS pair allocation with 1 and 1000 held; TCP over berth's bridge vs a plain veth (iperf3);
# cp's copy stream (1 GiB through a pipe); the journal relay (100 MB of lines, a fake journald).
bench-cargo:
	$(CARGO) bench --locked --bench mcs $(BENCH_CARGO_FLAGS)
	$(CARGO) bench --locked --bench copy $(BENCH_CARGO_FLAGS)
	$(CARGO) bench --locked --bench relay $(BENCH_CARGO_FLAGS)
	$(CARGO) bench --locked --bench bridge_iperf3 $(BENCH_CARGO_FLAGS)
