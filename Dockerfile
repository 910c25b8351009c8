# One image for every arbstr component; compose.yaml picks the component with `arbstr run NAME`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY actors ./actors
COPY gateway ./gateway
COPY arbstr ./arbstr
COPY bench ./bench
RUN pip install --no-cache-dir . && mkdir -p /var/lib/arbstr && chown nobody /var/lib/arbstr
USER nobody
ENTRYPOINT ["arbstr"]
