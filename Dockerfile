FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY archiver ./archiver
COPY policies ./policies
COPY audit ./audit
COPY exporters ./exporters
COPY review ./review
COPY console ./console
COPY strongroom ./strongroom
RUN pip install --no-cache-dir . && useradd --system --home /data strongroom && mkdir -p /data && chown strongroom /data
USER strongroom
ENV STRONGROOM_DATA_DIR=/data STRONGROOM_HOST=0.0.0.0
EXPOSE 8000
CMD ["strongroom", "serve"]
