"""What every stage uses: user-facing errors, atomic writes, file hashing, the built-in
configs shipped with the package, and the per-slide batch runner. Imports nothing else of
fascicle, so ``models/`` and every stage may depend on it."""
