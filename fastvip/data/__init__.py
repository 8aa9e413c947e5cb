"""Stage 1, data: listing sources, transcoding, writing and reading packed files, splits."""
