.PHONY: demo test lint bench
demo:  ## set up .venv and run FGA on the bundled model and example images
	bash scripts/demo.sh
test:  ## set up .venv when missing and run the offline test suite
	bash scripts/test.sh
lint:
	.venv/bin/ruff check hf_fga scripts tests spaces
	.venv/bin/ruff format --check hf_fga scripts tests spaces
bench:
	.venv/bin/python scripts/bench_attribution.py
	.venv/bin/python scripts/bench_faithfulness.py
	.venv/bin/python scripts/bench_sae_training.py
	.venv/bin/python scripts/bench_space.py
