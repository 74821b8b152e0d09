#!/bin/bash
echo itest-now
