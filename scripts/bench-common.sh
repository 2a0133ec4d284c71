# Sourced by the benchmark scripts in this folder.

median() { # median of the numbers on stdin
  sort -n | awk '{v[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}
