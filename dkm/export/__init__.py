"""Export: a shared net as a compact `.dkm` file and back (`dkmfile`), with its index codings
(`coding`: fixed width, Huffman, rANS), and as an ONNX graph (`onnx`, the optional extra).

May import: the core, dkm.io. Imported by: dkm.app.
"""
