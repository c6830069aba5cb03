# The exitrec worker (graph updater, scorer, analytics, replay: every `exitrec` command) on the dependency image.
# Context: the project's packages and pyproject.toml; models come from the dependency image's wheels and
# checkpoints from the /cache mount. Nothing is fetched at run time.
ARG PYTHON
FROM ${PYTHON}
COPY app /app
RUN echo /app > /opt/venv/lib/python3.11/site-packages/exitrec-app.pth \
 && printf '#!/opt/venv/bin/python\nimport sys\nfrom worker.cli import main\nsys.exit(main())\n' > /opt/venv/bin/exitrec \
 && chmod +x /opt/venv/bin/exitrec && exitrec --help > /dev/null
ENV EXITREC_CACHE_DIR=/cache EXITREC_DATA_DIR=/data
WORKDIR /app
ENTRYPOINT ["exitrec"]
CMD ["--help"]
