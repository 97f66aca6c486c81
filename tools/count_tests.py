#!/usr/bin/env python3
"""Counts test cases from Bazel's test.xml files and prints 'N passed, N failed'.

usage: count_tests.py TESTLOGS_DIR BAZEL_EXIT_CODE TARGET...
A target with no test.xml (failed to build, crashed before writing it) counts as one failure; a
non-zero Bazel exit with nothing else failing (a build error) counts as one failure too, so the
summary can never read as green when Bazel was not.
"""
import os
import sys
import xml.etree.ElementTree as ET


def main():
    logs, rc, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    passed = failed = 0
    for t in targets:
        pkg, name = t.lstrip("/").split(":")
        xml = os.path.join(logs, pkg, name, "test.xml")
        if not os.path.exists(xml):
            print("no result for %s" % t)
            failed += 1
            continue
        root = ET.parse(xml).getroot()
        cases = root.iter("testcase")
        n = 0
        for c in cases:
            n += 1
            if c.find("failure") is not None or c.find("error") is not None:
                failed += 1
                print("FAILED %s %s.%s" % (t, c.get("classname", ""), c.get("name", "")))
            else:
                passed += 1
        if n == 0:
            failed += 1
            print("no test cases in %s" % t)
    if rc != 0 and failed == 0:
        print("bazel exited with %d" % rc)
        failed = 1
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
