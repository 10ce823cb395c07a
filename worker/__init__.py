"""The Celery worker. Importing the package first makes torch's OpenMP threads wait passively,
also when Celery is started directly (``celery -A worker.celery_app worker``)."""

from app.cpu import prefer_passive_openmp

prefer_passive_openmp()
