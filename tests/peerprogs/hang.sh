#!/bin/sh
# A contract program that never answers: it ignores SIGTERM too, so the testbed has to
# escalate to SIGKILL (of the whole process group: the sleep below included).
trap '' TERM
echo "hang: joined nothing, waiting forever" >&2
sleep 3600 &
wait
