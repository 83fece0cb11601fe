# The two commands of the README, plus the pieces they are made of.
#   make demo   set up everything (first time ~3 min) and run the demo
#   make test   set up everything and run the test suite
VENV ?= .venv
# Tests and demos keep DDS discovery on this machine's loopback.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export PATH := $(abspath $(VENV))/bin:$(PATH)
export VENV

.PHONY: setup test demo lint
setup:
	@scripts/setup.sh

test: setup
	pytest

demo: setup
	resilient-perception demo

lint: setup
	ruff check .
