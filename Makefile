# effx-lab: the README's commands. `make book` builds the book; `make test` checks everything.
# Both create .venv on first use and install what they need (CPU PyTorch pinned, see TORCH_SPEC).

PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
# The CPU wheel of PyTorch this course is tested with (a plain `torch` would pull a multi-GB CUDA
# build on Linux). On a GPU machine: make book TORCH_SPEC="torch" (or keep the torch you have).
TORCH_SPEC ?= torch==2.13.0
STAMP      := $(VENV)/.effx-installed
VENDOR     := book/_vendor/plotly.min.js book/_vendor/tex-svg.js
BOOK_ENV   := EFFX_PLOTLY_RENDERER=book EFFX_QUIET=1
export PYTHONHASHSEED := 0

# Notebooks the portable run executes from the installed wheel with no Triton: every notebook that uses a
# Triton kernel module, and the first notebook of each chapter that has none (tests/portable_notebooks.py).
PORTABLE_NB := $(shell $(PYTHON) tests/portable_notebooks.py)
# Peak memory a notebook's kernel may reach (the course's budget: 4 GB per notebook).
NB_MAX_RSS_MB := 4096
# nbval stores what it executed in the book's execution cache, so the book build does not run a notebook again.
NBVAL      := $(BIN)/python -m pytest --nbval-lax -q -p no:cacheprovider -p nbval_cache --nb-max-rss-mb $(NB_MAX_RSS_MB)
NB_CACHE   := _build/.jupyter_cache

.PHONY: help setup book book-strict book-cache-guard test test-package test-notebooks test-instructor test-browser notebook-form \
        test-portable lab student bench gpu-check clean

help:
	@echo "make book   build the HTML book into _build/html (executes every notebook)"
	@echo "make test   package tests + notebooks under nbval + nbgrader + strict book build + browser check"
	@echo "make lab    JupyterLab on the notebooks"
	@echo "make student  student versions of the notebooks into _build/student"
	@echo "make test-instructor  real nbgrader: generate and autograde every notebook (installs .[instructor])"
	@echo "make bench  chapter 1, 2, 3, 4 and 7 benchmarks (JSON into bench_results/)"
	@echo "make gpu-check  on a CUDA machine: GPU tests, compiled Triton kernels, GPU benchmarks (JSON)"
	@echo "make test-portable  a notebook per chapter + every kernel notebook from the wheel, without Triton"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[book,test,triton]"
	@touch $@

$(VENDOR): $(STAMP) book/vendor_assets.sh
	book/vendor_assets.sh $(BIN)/python

# The execution cache is keyed on a notebook's code only; when the package changes, its outputs are stale.
book-cache-guard:
	@mkdir -p $(NB_CACHE); \
	h=$$(find effx_lab pyproject.toml -type f \( -name '*.py' -o -name '*.npz' -o -name '*.toml' \) | LC_ALL=C sort \
	     | xargs cat | sha1sum | cut -c1-16); \
	if [ "$$(cat $(NB_CACHE)/.package-hash 2>/dev/null)" != "$$h" ]; then \
	  rm -rf $(NB_CACHE); mkdir -p $(NB_CACHE); echo "$$h" > $(NB_CACHE)/.package-hash; \
	  echo "book: the package changed since the notebooks were last executed; they will run again"; fi

book: $(STAMP) $(VENDOR) book-cache-guard
	$(BOOK_ENV) $(BIN)/jupyter-book build .
	@test -f _build/html/index.html
	@echo
	@echo "The book is built. Open: file://$(CURDIR)/_build/html/index.html"
	@echo "(or serve it: $(BIN)/python -m http.server -d _build/html 8000)"

# Warnings are errors (a notebook that raises, a broken link, a missing citation fail the build).
book-strict: $(STAMP) $(VENDOR) book-cache-guard
	rm -rf _build/html _build/jupyter_execute _build/.doctrees
	$(BOOK_ENV) $(BIN)/jupyter-book build . -W -n --keep-going

test-package: $(STAMP)
	$(BIN)/python -m pytest tests -m "not browser and not instructor" -q

# Solution notebooks must pass every checker: EFFX_CHECK_STRICT turns a failed check into an error.
# Run with the book's renderer so that what nbval executed can be reused by the book build.
test-notebooks: $(STAMP) book-cache-guard
	EFFX_CHECK_STRICT=1 $(BOOK_ENV) PYTHONPATH=tests $(NBVAL) --nb-cache=$(NB_CACHE) notebooks

# Instructors use nbgrader: generate_assignment releases every notebook, autograde gives the solutions full marks
# and the released student versions zero, and the executed student versions give no exercise away
# (tests/book/test_nbgrader.py; EFFX_NBGRADER_ONLY=02.1,07.1 restricts it to some notebooks).
INSTRUCTOR_STAMP := $(VENV)/.effx-instructor
$(INSTRUCTOR_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[instructor]"
	@touch $@

test-instructor: $(INSTRUCTOR_STAMP)
	$(BIN)/python -m pytest tests -m instructor -q

# The package as a student on macOS/Windows or on Colab gets it: built as a wheel, installed into a fresh
# venv without Triton (so `import triton` really fails), notebooks run from a folder outside the checkout.
PORTABLE_VENV := _build/venv-portable
# The package tests that touch Triton, re-run with an import blocker so `import triton` raises: they must skip
# or pass, never error, as on macOS and Windows (test_gpu_check excluded: its dry run takes ~30 s).
NO_TRITON_TESTS := $(shell grep -lE 'import kernels|kernels as|import triton|importorskip..triton' tests/*/test_*.py \
                     | grep -v test_gpu_check)
test-portable: $(STAMP)
	@blocker=$$(mktemp -d) && trap 'rm -rf "$$blocker"' EXIT && mkdir "$$blocker/triton" && \
	echo 'raise ImportError("Triton hidden by make test-portable")' > "$$blocker/triton/__init__.py" && \
	PYTHONPATH="$$blocker" $(BIN)/python -m pytest -q -p no:cacheprovider $(NO_TRITON_TESTS)
	@rm -rf _build/dist && $(BIN)/python -m pip wheel --quiet --no-deps -w _build/dist . >/dev/null && rm -rf build
	@test -x $(PORTABLE_VENV)/bin/python || $(PYTHON) -m venv $(PORTABLE_VENV)
	$(PORTABLE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PORTABLE_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(PORTABLE_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps _build/dist/effx_lab-*.whl
	$(PORTABLE_VENV)/bin/python -m pip install --quiet _build/dist/effx_lab-*.whl nbval ipykernel
	@$(PORTABLE_VENV)/bin/python -m pip uninstall --quiet -y triton 2>/dev/null || true
	@run=$$(mktemp -d) && trap 'rm -rf "$$run"' EXIT && \
	for nb in $(PORTABLE_NB); do mkdir -p "$$run/$$(dirname $$nb)" && cp "$$nb" "$$run/$$nb"; done && \
	cp tests/nbval_cache.py "$$run/" && cd "$$run" && \
	$(CURDIR)/$(PORTABLE_VENV)/bin/python -c "import effx_lab, sys; \
	  import importlib.util as u; assert u.find_spec('triton') is None, 'triton is importable'; \
	  assert 'site-packages' in effx_lab.__file__, effx_lab.__file__; \
	  print('portable run: effx_lab', effx_lab.__version__, 'from', effx_lab.__file__, '; no Triton')" && \
	EFFX_CHECK_STRICT=1 PYTHONPATH="$$run" $(CURDIR)/$(PORTABLE_VENV)/bin/python -m pytest --nbval-lax -q \
	  -p no:cacheprovider -p nbval_cache --nb-max-rss-mb $(NB_MAX_RSS_MB) --nbval-current-env $(PORTABLE_NB)

test-browser: $(STAMP)
	$(BIN)/python -m pytest tests -m browser -q

# Each step's time is printed at the end (the budget: 25 minutes on a 2-core CPU from a cold clone).
test: $(STAMP) $(VENDOR)
	@start=$$(date +%s); split=""; \
	for step in test-package test-notebooks test-instructor book-strict test-browser test-portable; do \
	  t0=$$(date +%s); \
	  $(MAKE) --no-print-directory $$step || { echo "make test: $$step FAILED"; exit 1; }; \
	  split="$$split $$step=$$(( $$(date +%s) - t0 ))s"; \
	done; \
	echo "make test: all checks passed in $$(( $$(date +%s) - start )) s ($$split )"

# JupyterLab refuses to start as root (containers, cloud VMs) unless told; the course runs there too.
lab: $(STAMP)
	@$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[lab]"
	$(BIN)/jupyter lab notebooks $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# Before committing a notebook written in MyST: the stored form (Colab-readable, nbgrader marks).
notebook-form: $(STAMP)
	$(BIN)/python book/_ext/notebook_form.py --write notebooks

student: $(STAMP)
	$(BIN)/effx-lab student notebooks _build/student
	@echo "Student versions: $(CURDIR)/_build/student"

bench: $(STAMP)
	$(BIN)/python -m effx_lab.bench ch01
	$(BIN)/python -m effx_lab.bench quant
	$(BIN)/python -m effx_lab.bench prune
	$(BIN)/python -m effx_lab.bench nm
	$(BIN)/python -m effx_lab.bench moe
	$(BIN)/python -m effx_lab.bench flash

# On a CUDA machine (under 8 minutes on an H100/A100): GPU tests, Triton kernels vs torch, GPU benchmarks,
# the notebooks' GPU branches; JSON into bench_results/. Without a GPU: make gpu-check GPU_CHECK_ARGS=--dry-run
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(BIN)/python -m effx_lab.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf _build bench_results .pytest_cache
