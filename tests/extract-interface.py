#!/usr/bin/env python3
"""Print one <interface> of an introspection document as a standalone <node>, normalised
(comments and whitespace dropped), so that served and published XML compare as text.

usage: extract-interface.py INTERFACE < introspection.xml
"""
import sys
import xml.etree.ElementTree as ET

name = sys.argv[1]
root = ET.fromstring(sys.stdin.read())
iface = next((i for i in root.findall("interface") if i.get("name") == name), None)
if iface is None:
    sys.exit(f"interface {name} not found")
for el in iface.iter():
    el.text = None
    el.tail = None
node = ET.Element("node")
node.append(iface)
ET.indent(node)
print('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"')
print(' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">')
print(ET.tostring(node, encoding="unicode"))
