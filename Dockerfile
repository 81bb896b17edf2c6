FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY schemas ./schemas
RUN pip install --no-cache-dir -e . \
    && mkdir -p /data && chgrp 0 /data && chmod 0770 /data
# compose runs it as the user who owns deploy/secrets (PIPELINE_UID), group 0:
# /data (the partners file's volume) is writable by group 0
ENTRYPOINT ["claude-pipeline"]
