# Shared by the comparison scripts in bench/ (sourced, not run).

# median: numbers separated by spaces or newlines on stdin -> their median.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# ratio A B -> A/B (0 when B is 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{print (b>0 ? a/b : 0)}'; }

# wait_socket PATH: up to 5 s for a daemon to create its socket.
wait_socket() { for _ in $(seq 1 50); do [ -S "$1" ] && return 0; sleep 0.1; done; return 1; }
