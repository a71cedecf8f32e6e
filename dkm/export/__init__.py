"""Export: a shared net as a compact `.dkm` file and back (`dkmfile`), with its index codings
(`coding`: fixed width, Huffman, rANS).

May import: the core, dkm.io. Imported by: dkm.app.
"""
