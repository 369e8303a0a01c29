# The two commands a newcomer needs:
#   make demo   — build shmkit and run the demo
#   make test   — build shmkit and run every test (what CI runs)
# Everything they need (Python venvs with maturin, pytest, numpy) is installed
# here, into .venv-3.11 and .venv-3.13 beside this file.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
FUZZ_SECONDS ?= 30
PYTHONS ?= 3.11 3.13
# Every CPython shmkit supports. PYTHONS get a development build and the whole
# suite; the others get the wheel a user would install (see wheel-test).
SUPPORTED_PYTHONS := 3.9 3.10 3.11 3.12 3.13
WHEEL_PYTHONS ?= $(filter-out $(PYTHONS),$(SUPPORTED_PYTHONS))
DEMO_PYTHON ?= 3.11
PIP_PACKAGES := maturin pytest numpy hypothesis mypy matplotlib joblib SharedArray posix_ipc shmlock faster-fifo
CARGO_TEST_CRATES := -p shmkit -p shmkit-cli -p shmkit-bench

.PRECIOUS: .venv-%/.installed .venv-%/.developed

.PHONY: demo test test-slow rust-test python-test wheels wheel-test fuzz venvs develop clean-venvs shm-check-start shm-check-end bench bench-quick

demo: .venv-$(DEMO_PYTHON)/.developed
	.venv-$(DEMO_PYTHON)/bin/python -m shmkit demo

# The whole run happens in one private, empty /dev/shm (scripts/private-shm),
# so no other program's segments are seen or touched, and shm-check-end sees
# exactly what the run left there. Where no private /dev/shm can be had, it
# runs on the shared one and the check compares with what was there before.
TEST_STEPS := shm-check-start rust-test python-test wheel-test bench-quick fuzz shm-check-end
test:
	@scripts/private-shm $(MAKE) --no-print-directory $(TEST_STEPS)

rust-test:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p shmkit --no-default-features --all-targets -- -D warnings
	cargo clippy -p shmkit --no-default-features --features list --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -q -p shmkit -p shmkit-cli
	scripts/private-shm cargo test $(CARGO_TEST_CRATES)
	scripts/private-shm cargo test -p shmkit --no-default-features --lib

python-test: $(foreach v,$(PYTHONS),.venv-$(v)/.developed)
	@set -e; for v in $(PYTHONS); do \
	  echo "=== pytest on CPython $$v ==="; \
	  SHMKIT_REQUIRED=1 scripts/private-shm .venv-$$v/bin/python -m pytest -q tests/python; \
	  echo "=== mypy.stubtest on CPython $$v ==="; \
	  .venv-$$v/bin/python -m mypy.stubtest shmkit \
	    --allowlist tests/stubtest-allowlist.txt; \
	done

# The tests that SIGKILL processes at random moments (pytest marker `kill`),
# with many more rounds than make test gives them (10, shm_helpers.kill_rounds).
test-slow: $(foreach v,$(PYTHONS),.venv-$(v)/.developed)
	@set -e; for v in $(PYTHONS); do \
	  echo "=== kill tests, 50 rounds, on CPython $$v ==="; \
	  rc=0; SHMKIT_KILL_ROUNDS=50 SHMKIT_REQUIRED=1 scripts/private-shm \
	    .venv-$$v/bin/python -m pytest -q -m kill tests/python || rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no test is marked kill yet"; \
	  elif [ $$rc -ne 0 ]; then exit $$rc; fi; \
	done

# Every benchmark on every Python in PYTHONS and the Rust API, stdlib and
# shmkit alternating; writes docs/benchmarks.md and docs/benchmarks.png.
bench: $(foreach v,$(PYTHONS),.venv-$(v)/.developed)
	.venv-$(DEMO_PYTHON)/bin/python bench/run.py $(foreach v,$(PYTHONS),--python $(v))

# A small run of the same, so CI keeps the command working (ratios are not
# judged); writes target/bench-quick/. Fails if any workload fails.
bench-quick: $(foreach v,$(PYTHONS),.venv-$(v)/.developed)
	.venv-$(DEMO_PYTHON)/bin/python bench/run.py --quick $(foreach v,$(PYTHONS),--python $(v))

# Every decoder of outside bytes has a cargo-fuzz target; each runs for
# FUZZ_SECONDS. The toolchain here is stable, so RUSTC_BOOTSTRAP lets
# cargo-fuzz use the sanitizer flags it needs. cargo-fuzz has no --locked,
# so the lock file is checked first: fuzzing never rewrites it.
fuzz:
	@command -v cargo-fuzz >/dev/null || { \
	  echo "fuzz: cargo-fuzz is missing; installing it (cargo install cargo-fuzz --locked) into $${CARGO_INSTALL_ROOT:-$${CARGO_HOME:-$$HOME/.cargo}}/bin"; \
	  cargo install -q cargo-fuzz --locked; }
	@cd fuzz && cargo metadata --locked --format-version 1 >/dev/null \
	  || { echo "FAIL: fuzz/Cargo.lock is out of date: run 'cargo update -w' in fuzz/ and commit it"; exit 1; }
	@cd fuzz && for t in $$(cargo fuzz list); do \
	  mkdir -p corpus/$$t target; \
	  echo "=== fuzzing $$t for $(FUZZ_SECONDS) s ==="; \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run $$t corpus/$$t seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) > target/fuzz-$$t.log 2>&1 \
	    || { tail -40 target/fuzz-$$t.log; echo "FAIL: fuzz target $$t"; exit 1; }; \
	  grep -E "^Done [0-9]+ runs" target/fuzz-$$t.log | sed "s/^/  $$t: /"; \
	done

develop: $(foreach v,$(PYTHONS),.venv-$(v)/.developed)

# A venv per interpreter, with the tools pinned only loosely: they are the
# test harness, not part of shmkit.
.venv-%/.installed:
	rm -rf .venv-$*
	"$$(scripts/find-python $*)" -m venv .venv-$*
	.venv-$*/bin/python -m pip install -q --upgrade pip
	.venv-$*/bin/python -m pip install -q $(PIP_PACKAGES)
	touch $@

# Rebuilt whenever Rust or Python sources change. maturin builds the native
# manager program too (crates/shmkit-py/build.rs puts it in
# python/shmkit/_bin), exactly as a wheel gets it.
.venv-%/.developed: .venv-%/.installed $(shell find crates python -name '*.rs' -o -name '*.py' -o -name '*.pyi' -o -name '*.pth' -o -name Cargo.toml 2>/dev/null) Cargo.toml pyproject.toml
	VIRTUAL_ENV=$(CURDIR)/.venv-$* .venv-$*/bin/maturin develop --release -q
	touch $@

# The wheels a user would install: one per supported CPython found here, in
# target/wheels. Each holds the extension, the manager program, the stubs and
# the start-up hook; `pip install .` builds the same.
wheels: .venv-$(DEMO_PYTHON)/.installed
	.venv-$(DEMO_PYTHON)/bin/maturin build --release -q -o target/wheels \
	  $(foreach v,$(SUPPORTED_PYTHONS),-i "$$(scripts/find-python $(v))")

# What `pip install` gives is the product: for each of WHEEL_PYTHONS, run the
# README's `pip install .` in a fresh venv with only the test tools beside it,
# check that `import shmkit` comes from that venv and finds the manager
# program there, and run the Python suite against it.
wheel-test:
	@set -e; for v in $(WHEEL_PYTHONS); do \
	  py="$$(scripts/find-python $$v)"; venv=target/wheel-venv-$$v; \
	  echo "=== the installed wheel on CPython $$v ==="; \
	  rm -rf $$venv; \
	  "$$py" -m venv $$venv; \
	  $$venv/bin/python -m pip install -q --upgrade pip; \
	  $$venv/bin/python -m pip install -q . pytest numpy hypothesis; \
	  (cd tests && ../$$venv/bin/python -c "import os, sys, shmkit, shmkit.managers as m; \
	    here = os.path.realpath(sys.prefix); \
	    assert os.path.realpath(shmkit.__file__).startswith(here), shmkit.__file__; \
	    assert m._manager_program() and m._manager_program().startswith(os.path.dirname(shmkit.__file__)), m._manager_program(); \
	    print('shmkit from', os.path.dirname(shmkit.__file__))"); \
	  SHMKIT_REQUIRED=1 scripts/private-shm $$venv/bin/python -m pytest -q tests/python; \
	done

# Tests must leave /dev/shm as they found it (inside make test's private
# /dev/shm, empty), and the clone too: nothing new, changed or deleted that
# git sees (build output and venvs are ignored by .gitignore).
SHM_BEFORE := target/shm-before.txt
GIT_BEFORE := target/git-status-before.txt
shm-check-start:
	@mkdir -p target && ls -1 /dev/shm | sort > $(SHM_BEFORE)
	@git status --porcelain --untracked-files=all > $(GIT_BEFORE)

shm-check-end:
	@ls -1 /dev/shm | sort | comm -13 $(SHM_BEFORE) - > target/shm-new.txt; \
	if [ -s target/shm-new.txt ]; then \
	  echo "FAIL: the tests left these in /dev/shm:"; cat target/shm-new.txt; exit 1; \
	else echo "/dev/shm: nothing left behind"; fi
	@git status --porcelain --untracked-files=all | diff -u $(GIT_BEFORE) - > target/git-status-diff.txt \
	  || { echo "FAIL: the tests changed the clone (git status before -> after):"; \
	       tail -n +3 target/git-status-diff.txt; exit 1; }

clean-venvs:
	rm -rf .venv-*
