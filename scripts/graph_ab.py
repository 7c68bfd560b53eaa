"""CPU time per step of the wide MLP (784-2048x4-10 tanh, batch 256), converted vs plain, with rbp
imported from a given source folder, so two versions of the code can be compared in turn.

Usage: python scripts/graph_ab.py SRC ALGORITHMS REPEATS, e.g.
    git archive 6cc5501 src | tar -x -C /tmp/old
    python scripts/graph_ab.py /tmp/old/src bp,rbp,srbp 6 && python scripts/graph_ab.py src bp,rbp,srbp 6
"""
import sys, time, statistics, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, sys.argv[1])
import rbp
torch.set_num_threads(1)
def model():
    torch.manual_seed(0)
    sizes=(784,2048,2048,2048,2048,10); L=[]
    for i,(a,b) in enumerate(zip(sizes[:-1],sizes[1:])):
        L += [nn.Linear(a,b)] + ([nn.Tanh()] if i < len(sizes)-2 else [])
    return nn.Sequential(*L)
x=torch.randn(256,784); y=torch.randint(0,10,(256,))
vs={"plain":model()}
for a in sys.argv[2].split(","): vs[a]=rbp.convert(model(),a,seed=0)
opts={k:torch.optim.SGD(m.parameters(),lr=0.01) for k,m in vs.items()}
T={k:[] for k in vs}
for r in range(int(sys.argv[3])):
    for k,m in vs.items():
        t=time.process_time()
        for _ in range(5):
            opts[k].zero_grad(set_to_none=True); F.cross_entropy(m(x),y).backward(); opts[k].step()
        T[k].append(time.process_time()-t)
p=statistics.median(T["plain"])
print(sys.argv[1], {k:round(statistics.median(v)/p,3) for k,v in T.items()})
