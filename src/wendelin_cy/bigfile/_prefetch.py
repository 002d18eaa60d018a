"""Moved to wendelin_cy.storage.zeo (which storages to ask for the blocks
ahead of a scan, and how many at a time); kept for the names."""

from wendelin_cy.storage.zeo import max_ahead, storage_prefetches

__all__ = ['storage_prefetches', 'max_ahead']
