"""Ratios of bench/same_host_split.sh's JSON lines: medians of per-round
ratios [min-max] (new/old, each build against the same round's references),
then every figure per round."""
import json,sys,statistics as st,collections
rows=[json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
g=collections.defaultdict(dict)  # round -> key -> gbps
for x in rows:
    r,who=x['tag'].split()
    if x['mode']=='kv': key=(who,'kv',x['op'],x['threads'])
    else: key=(who,x['mode'],x['op'],x['desc_size'],x['batch'],x['threads'])
    g[r][key]=x['gbps']
def ratio(name,a,b):
    v=[g[r][a]/g[r][b] for r in g if a in g[r] and b in g[r]]
    v.sort(); print(f"{name:55s} {st.median(v):.3f} [{v[0]:.2f}-{v[-1]:.2f}] n={len(v)}")
M=1<<20
for op in ('read','write'):
    ratio(f"{op} 64x1MiB new / memcpy 2 threads",('new','engine',op,M,64,1),('ref','memcpy','hot',M,64,2))
    ratio(f"{op} 64x1MiB old / memcpy 2 threads",('old','engine',op,M,64,1),('ref','memcpy','hot',M,64,2))
    ratio(f"{op} 64x1MiB new / memcpy 1 thread",('new','engine',op,M,64,1),('ref','memcpy','hot',M,64,1))
    ratio(f"{op} 64x1MiB new/old",('new','engine',op,M,64,1),('old','engine',op,M,64,1))
    ratio(f"{op} 64MiB new / memcpy 2 threads",('new','engine',op,64*M,1,1),('ref','memcpy','hot',64*M,1,2))
    ratio(f"{op} 64MiB old / memcpy 2 threads",('old','engine',op,64*M,1,1),('ref','memcpy','hot',64*M,1,2))
    ratio(f"{op} 64MiB new/old",('new','engine',op,64*M,1,1),('old','engine',op,64*M,1,1))
    ratio(f"{op} 1MiB new/old",('new','engine',op,M,1,1),('old','engine',op,M,1,1))
    ratio(f"{op} 4MiB new/old",('new','engine',op,4*M,1,1),('old','engine',op,4*M,1,1))
ratio("read 1MiB new / raw process_vm_readv",('new','engine','read',M,1,1),('ref','cma','read',M,1,1))
ratio("read 1MiB old / raw process_vm_readv",('old','engine','read',M,1,1),('ref','cma','read',M,1,1))
for who in ('old','new'):
    ratio(f"kv pull {who} / memcpy 2 threads (same pieces)",(who,'kv','pull',1),(who,'kv','memcpy',2))
ratio("kv pull new/old",('new','kv','pull',1),('old','kv','pull',1))
for k in sorted(g[next(iter(g))]): print(k, ' '.join(f"{g[r].get(k,0):.1f}" for r in sorted(g)))
