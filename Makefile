# Everything a developer runs; .ci/run calls the same targets.
PY      := .venv/bin/python
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# binutils: readelf, with which tests/server/test_trust.py finds the sections it corrupts.
APT     := dataset-fashion-mnist prometheus gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils

.PHONY: demo test test-slow test-slow-other test-fleet test-arm lint typecheck proto bench ci

.venv/.installed-dev: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip "setuptools>=77"
	# train: torch (the CPU build, pinned) and what the torch tests and EfficientNet-Lite0 export need.
	$(PY) -m pip install -q -e '.[dev,train]'
	touch $@

.apt-installed:
	command -v prometheus >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null && command -v readelf >/dev/null && \
	  [ -d /usr/share/datasets/fashion-mnist ] || \
	  ($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $(APT))
	touch $@

demo: .venv/.installed-dev
	.venv/bin/edgecam demo

test: .venv/.installed-dev .apt-installed
	$(PY) -m pytest

# The slow suites that need neither qemu nor the fleet: recipes on the bundled CNN, EfficientNet-Lite0
# export and int8, the torch side of bench_cuda, each extra installed alone. Not the two tuning runs
# (Ctrl-C resume, RPC tracker): on a loaded 2-core machine the Ctrl-C one failed 1 run in 3 (exit 130
# without its message), so they run with `make test-slow`, not in CI, until that is understood.
test-slow-other: .venv/.installed-dev .apt-installed .apt-installed-arm
	$(PY) -m pytest -m slow --ignore=tests/compiler/test_arm_qemu.py --ignore=tests/deploy/test_ansible_fleet.py \
	  --deselect tests/compiler/test_tuning.py::test_tune_survives_ctrl_c_a_rerun_continues_and_compile_uses_the_database \
	  --deselect tests/compiler/test_tuning.py::test_tuning_through_an_rpc_tracker_on_loopback

# What the fleet test needs to boot cameras: namespaces, debootstrap, systemd-nspawn, ssh.
FLEET_APT := debootstrap systemd-container openssh-client iproute2

.apt-installed-fleet:
	command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null && command -v ssh >/dev/null || \
	  ($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $(FLEET_APT))
	touch $@

test-slow: .venv/.installed-dev .apt-installed .apt-installed-fleet .apt-installed-arm
	$(PY) -m pytest -m slow

# What running aarch64 artifacts under qemu-user needs: the emulator and the cross g++ (with
# libstdc++ for arm64) that builds the small TVM runner; no binfmt or arm64 root file system.
# qemu-user: the dynamic qemu, whose TCG plugins bench/bench_arm.py counts instructions with.
ARM_APT := qemu-user-static qemu-user g++-aarch64-linux-gnu

.apt-installed-arm:
	command -v qemu-aarch64-static >/dev/null && command -v qemu-aarch64 >/dev/null && \
	  command -v aarch64-linux-gnu-g++ >/dev/null || \
	  ($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $(ARM_APT))
	touch $@

# aarch64 builds run under qemu and checked against ONNX Runtime, with each int8 dot step bit-exact on
# emulated cores with and without its feature and int8 MobileNetV2 on two cores (4.6 and 6.3 min on 2 cores
# shared with other work, 1.7 min of CPU; the first run also downloads the aarch64 TVM runtime wheels,
# ~100 MB, and builds the runner into ~/.cache/edgecam).
test-arm: .venv/.installed-dev .apt-installed .apt-installed-arm
	$(PY) -m pytest -m slow tests/compiler/test_arm_qemu.py

# The real-fleet Ansible test alone (~10 min on 2 cores, plus ~2 min the first time for the rootfs).
test-fleet: .venv/.installed-dev .apt-installed .apt-installed-fleet
	$(PY) -m pytest -m slow tests/deploy/test_ansible_fleet.py

lint: .venv/.installed-dev
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	cd deploy/ansible && ../../.venv/bin/ansible-lint --offline

# mypy does not follow setuptools' editable-install import hook, so check an installed copy.
typecheck: .venv/.installed-dev
	rm -rf build/typecheck && $(PY) -m pip install -q --no-deps --no-build-isolation --target build/typecheck .
	cd build/typecheck && ../../.venv/bin/mypy --config-file ../../pyproject.toml -p edgecam

proto: .venv/.installed-dev
	$(PY) -m edgecam.proto.generate

bench: .venv/.installed-dev
	$(PY) bench/bench_runtime.py

ci: lint typecheck test
