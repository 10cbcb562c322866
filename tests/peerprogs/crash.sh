#!/bin/sh
# A contract program that dies at once, before any result line.
echo "crash: segmentation fault (pretend)" >&2
exit 139
