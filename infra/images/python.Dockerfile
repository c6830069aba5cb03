# The project's Python dependencies (the site-packages of infra/venv.sh's virtualenv, models' wheels included) on
# the local base image's Python 3.11: a layer rebuilt only when the dependency list changes.
ARG BASE
FROM ${BASE}
COPY site-packages /opt/venv/lib/python3.11/site-packages
RUN mkdir -p /opt/venv/bin && ln -s /usr/bin/python3.11 /opt/venv/bin/python \
 && printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n' > /opt/venv/pyvenv.cfg \
 && /opt/venv/bin/python -c 'import torch, transformers, qdrant_edge, faust'
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
