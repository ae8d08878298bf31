# syntax=docker/dockerfile:1
#
# One Dockerfile for every SalesPulse Python service (docker-compose.yml).
#
#   builder  - builds wheels for the runtime packages (docker/requirements-runtime.txt,
#              generated from requirements.in; pinned by the lock requirements.txt)
#              and installs them, plus the project (editable, so sql/ stays
#              beside the code), into /opt/venv
#   app      - python slim + /opt/venv + the source: producers, consumer, migrate,
#              Dagster (webserver, daemon, code location), dashboard, operations.
#              Adds only the PostgreSQL 15 client (pg_dump/pg_restore for
#              `salespulse backup|restore`). No JVM, no Spark jars.
#   spark    - app + Java 17 + the PostgreSQL JDBC driver + Spark's jars (from
#              pyspark): Spark master, worker and the Spark Connect server.
#
#   docker build --target app   -t salespulse/app:0.1.0 .
#   docker build --target spark -t salespulse/spark:0.1.0 .
#
# Every service runs one command of the same image (see docker-compose.yml).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /build
COPY requirements.txt docker/requirements-runtime.txt ./
# Wheels first (a package without a wheel would be compiled here, never in
# the final image), then an install from those wheels only.
RUN pip wheel --wheel-dir /wheels -r requirements-runtime.txt -c requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels -r requirements-runtime.txt -c requirements.txt \
 && /opt/venv/bin/pip install setuptools==80.9.0

# The project itself, installed editable at its final path (/app): the
# `salespulse` console script comes from pyproject.toml, and salespulse.db
# finds the migrations in /app/sql.
WORKDIR /app
COPY pyproject.toml ./
COPY salespulse ./salespulse
COPY services ./services
COPY orchestration ./orchestration
COPY dashboard ./dashboard
COPY sql ./sql
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation -e /app \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# Spark's jars (~460 MB) only go into the spark image: the other services use
# the Spark Connect client (pure Python) and never start a JVM.
RUN mv /opt/venv/lib/python3.11/site-packages/pyspark/jars /opt/spark-jars

# --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS app

LABEL org.opencontainers.image.title="salespulse" \
      org.opencontainers.image.description="SalesPulse services: producers, consumer, Dagster, dashboard, operations"

RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 salespulse \
 && useradd --system --uid 10001 --gid salespulse --home-dir /var/lib/salespulse --shell /usr/sbin/nologin salespulse

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    SALESPULSE_STATE_DIR=/var/lib/salespulse

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
COPY docker/dagster/dagster.yaml docker/dagster/workspace.yaml /opt/dagster/dagster_home/

RUN mkdir -p /opt/dagster/storage /var/lib/salespulse \
 && chown -R salespulse:salespulse /opt/dagster /var/lib/salespulse

WORKDIR /app
USER salespulse
CMD ["salespulse", "--help"]

# --------------------------------------------------------------------------
FROM app AS spark

USER root
# Java 17 for Spark (pyspark 4.3 ships the Spark jars, including Spark Connect)
# and Debian's PostgreSQL JDBC driver (/usr/share/java/postgresql.jar).
# procps: Spark's launch scripts call ps.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless libpostgresql-jdbc-java procps \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /opt/spark/work /opt/spark/scratch \
 && chown -R salespulse:salespulse /opt/spark

ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark \
    SPARK_CONF_DIR=/opt/spark/conf \
    SPARK_WORKER_DIR=/opt/spark/work \
    SPARK_LOCAL_DIRS=/opt/spark/scratch \
    JDBC_JAR=/usr/share/java/postgresql.jar
ENV PATH=$SPARK_HOME/bin:$SPARK_HOME/sbin:$PATH

COPY --from=builder /opt/spark-jars $SPARK_HOME/jars
COPY docker/spark/spark-defaults.conf docker/spark/log4j2.properties /opt/spark/conf/

USER salespulse
CMD ["spark-submit", "--version"]
