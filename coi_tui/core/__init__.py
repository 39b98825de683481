"""The lowest layer: plain helpers every other part may use (errors, paths, safe file
opening, atomic writes and locks, text cleaning, timing, root-owned installs). Standard
library only; imports nothing else of the package."""
