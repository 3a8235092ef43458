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
BOOK_ENV   := EFFX_PLOTLY_RENDERER=book
export PYTHONHASHSEED := 0

.PHONY: help setup book book-strict test test-package test-notebooks test-browser lab student bench clean

help:
	@echo "make book   build the HTML book into _build/html (executes every notebook)"
	@echo "make test   package tests + notebooks under nbval + strict book build + headless-browser check"
	@echo "make lab    JupyterLab on the notebooks"
	@echo "make student  student versions of the notebooks into _build/student"
	@echo "make bench  chapter 1, 2 and 7 benchmarks (JSON into bench_results/)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[book,test,triton]"
	@touch $@

$(VENDOR): $(STAMP) book/vendor_assets.sh
	book/vendor_assets.sh $(BIN)/python

book: $(STAMP) $(VENDOR)
	$(BOOK_ENV) $(BIN)/jupyter-book build .
	@test -f _build/html/index.html
	@echo
	@echo "The book is built. Open: file://$(CURDIR)/_build/html/index.html"
	@echo "(or serve it: $(BIN)/python -m http.server -d _build/html 8000)"

# Warnings are errors (a notebook that raises, a broken link, a missing citation fail the build).
book-strict: $(STAMP) $(VENDOR)
	rm -rf _build/html _build/jupyter_execute _build/.doctrees
	$(BOOK_ENV) $(BIN)/jupyter-book build . -W -n --keep-going

test-package: $(STAMP)
	$(BIN)/python -m pytest tests -m "not browser" -q

# Solution notebooks must pass every checker: EFFX_CHECK_STRICT turns a failed check into an error.
test-notebooks: $(STAMP)
	EFFX_CHECK_STRICT=1 $(BIN)/python -m pytest --nbval-lax notebooks -q -p no:cacheprovider

test-browser: $(STAMP)
	$(BIN)/python -m pytest tests -m browser -q

test: $(STAMP) $(VENDOR)
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory test-package && \
	$(MAKE) --no-print-directory test-notebooks && \
	$(MAKE) --no-print-directory book-strict && \
	$(MAKE) --no-print-directory test-browser && \
	echo "make test: all checks passed in $$(( $$(date +%s) - start )) s"

lab: $(STAMP)
	@$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[lab]"
	$(BIN)/jupyter lab notebooks

student: $(STAMP)
	$(BIN)/effx-lab student notebooks _build/student
	@echo "Student versions: $(CURDIR)/_build/student"

bench: $(STAMP)
	$(BIN)/python -m effx_lab.bench ch01
	$(BIN)/python -m effx_lab.bench quant
	$(BIN)/python -m effx_lab.bench flash

clean:
	rm -rf _build bench_results .pytest_cache
