# oseg3d on top of its runtime image (images/Dockerfile): the package (lib/, components/, pipelines/) and
# nothing else, so a source change rebuilds these few layers only. Built by images/build.py.
ARG DEPS_IMAGE
FROM ${DEPS_IMAGE}
LABEL oseg3d.stage=app org.opencontainers.image.title=oseg3d
ARG UID=1000
USER root
COPY pyproject.toml README.md /tmp/src/
COPY lib/ /tmp/src/lib/
COPY components/ /tmp/src/components/
COPY pipelines/ /tmp/src/pipelines/
# --no-deps: the runtime image holds the pinned dependencies; pip check proves them complete and consistent
# (the CPU image knowingly lacks open_clip_torch). setuptools and wheel are pinned there too: no isolation.
RUN set -eu; \
    cd /tmp; \
    pip install --no-index --no-deps --no-build-isolation --no-cache-dir --disable-pip-version-check /tmp/src; \
    rm -rf /tmp/src; \
    if pip check | grep -v -i -e "^No broken requirements" -e "requires open.clip.torch, which is not"; \
    then echo "pinned dependencies incomplete: run python images/build.py --lock" >&2; exit 1; fi; \
    python -c "import oseg3d.steps.create_data, kfp, spconv.pytorch, torch"
USER $UID:$UID
CMD ["python", "-c", "import oseg3d, torch; print('oseg3d', oseg3d.__version__, 'torch', torch.__version__)"]
