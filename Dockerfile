FROM python:3.11-slim
WORKDIR /srv
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml ./
COPY app.py ./
COPY feed ./feed
COPY sagas ./sagas
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-cache-dir .  && useradd --create-home feed
USER feed
EXPOSE 8000
CMD ["gunicorn", "--config", "feed/gunicorn_conf.py", "--bind", "0.0.0.0:8000", "app:create_app()"]
