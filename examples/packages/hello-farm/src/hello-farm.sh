#!/bin/bash
echo "Hello from pkgfarm!"
