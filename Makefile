# latentlm: set-up, demo, tests and the recipe of the shipped model.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast venv shapes-tiny bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/latentlm build-kernels
	touch $(STAMP)

venv: $(STAMP)

## Generate a picture with the shipped model and print its path.
demo: $(STAMP)
	$(BIN)/latentlm generate --modality image --prompt "a red circle above a blue square" --seed 0 -o demo.png

## The whole test suite, slow (training and quality) checks included.
test: $(STAMP)
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

## Only the quick tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

## Retrain the shapes-tiny model from scratch with our own commands (about 12 h on 2 CPU cores).
## Each training step can be continued after an interruption: rerun it with --resume.
## Stages 1-2 draw; stage 3 adds reading pictures (captions, questions, grounding), stage 4 more of it,
## stage 5 boxed answers and in-context batches, stages 5b-5i reasoned spatial and colour answers (5j, 5k and 5m,
## branches, are measured experiments: BENCHMARKS.md), stage 5l grows the backbone to 6 blocks, 5n draws longer;
## the speech sigma-VAE (shipped on its own as codecs/speech-vae) and stage 6c add text-to-speech (6c is stages
## 6 + 6b, measured in BENCHMARKS.md, in one schedule); the EnCodec tokenizer serves the codec-token baseline. The shipped model is stage 5n's (it draws and reads); 6c's adds speech once it meets its bars.
shapes-tiny: $(STAMP)
	$(BIN)/latentlm train-tokenizer -o runs/shapes-tiny/tokenizer.model
	$(BIN)/latentlm train-codec latentlm/configs/shapes-tiny-vae.yaml -o runs/vae
	$(BIN)/latentlm train latentlm/configs/shapes-tiny.yaml -o runs/shapes-tiny
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage2.yaml -o runs/shapes-tiny-2
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage3.yaml -o runs/shapes-tiny-3
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage4.yaml -o runs/shapes-tiny-4
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage5.yaml -o runs/shapes-tiny-5
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage5b.yaml -o runs/shapes-tiny-5b
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage5c.yaml -o runs/shapes-tiny-5c
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage5d.yaml -o runs/shapes-tiny-5d
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage5e.yaml -o runs/shapes-tiny-5e
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage5f.yaml -o runs/shapes-tiny-5f
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage5h.yaml -o runs/shapes-tiny-5h
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage5i.yaml -o runs/shapes-tiny-5i
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage5l.yaml -o runs/shapes-tiny-5l
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage5n.yaml -o runs/shapes-tiny-5n
	$(BIN)/latentlm export runs/shapes-tiny-5n/final -o latentlm/pretrained/shapes-tiny
	$(BIN)/latentlm train-codec latentlm/configs/speech-vae.yaml -o runs/speech-vae
	$(BIN)/latentlm train-codec latentlm/configs/speech-vae-2.yaml -o runs/speech-vae-2
	$(BIN)/latentlm train-codec latentlm/configs/speech-vae-3.yaml -o runs/speech-vae-3
	$(BIN)/latentlm export runs/speech-vae-3/final -o latentlm/pretrained/codecs/speech-vae
	$(BIN)/latentlm train-codec latentlm/configs/speech-encodec-pre.yaml -o runs/speech-encodec-pre
	$(BIN)/latentlm train-codec latentlm/configs/speech-encodec-2.yaml -o runs/speech-encodec-2
	$(BIN)/latentlm train-codec latentlm/configs/speech-encodec-3.yaml -o runs/speech-encodec-3
	$(BIN)/latentlm export runs/speech-encodec-3/final -o latentlm/pretrained/codecs/speech-encodec
	$(BIN)/latentlm train latentlm/configs/shapes-tiny-stage6c.yaml -o runs/shapes-tiny-6c

## Measure and write BENCHMARKS.md (the machine should be idle).
bench: $(STAMP)
	$(BIN)/python benchmarks/kernels.py && $(BIN)/python benchmarks/backbones.py && $(BIN)/python benchmarks/shapes_tiny.py

clean:
	rm -rf demo.png .pytest_cache build *.egg-info
