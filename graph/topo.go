package graph

import (
	"container/heap"
	"fmt"
	"strings"
)

// SortTopo reorders g.Nodes (not subgraphs) so every node follows the nodes
// it depends on, directly or through values its subgraphs capture. The sort
// is stable: among ready nodes the one earlier in the current list goes
// first, so an already ordered list is unchanged and appended nodes land
// right after their inputs are ready. A cycle is an error that names it.
func (g *Graph) SortTopo() error {
	order, err := g.topoOrder()
	if err != nil {
		return err
	}
	g.Nodes = order
	return nil
}

// topoOrder is the order SortTopo gives, or the cycle that prevents one.
// Load runs it only as a check, keeping the file's own node order.
func (g *Graph) topoOrder() ([]*Node, error) {
	index := make(map[*Node]int, len(g.Nodes))
	for i, n := range g.Nodes {
		index[n] = i
	}
	deps := make([][]int, len(g.Nodes)) // deps[i]: nodes that must precede i
	users := make([][]int, len(g.Nodes))
	for i, n := range g.Nodes {
		seen := map[int]bool{}
		for _, v := range n.dependencies() {
			if p := v.producer; p != nil {
				if j, ok := index[p]; ok && !seen[j] {
					seen[j] = true
					deps[i] = append(deps[i], j)
					users[j] = append(users[j], i)
				}
			}
		}
	}
	pending := make([]int, len(g.Nodes))
	ready := &intHeap{}
	for i := range g.Nodes {
		pending[i] = len(deps[i])
		if pending[i] == 0 {
			heap.Push(ready, i)
		}
	}
	order := make([]*Node, 0, len(g.Nodes))
	for ready.Len() > 0 {
		i := heap.Pop(ready).(int)
		order = append(order, g.Nodes[i])
		for _, u := range users[i] {
			pending[u]--
			if pending[u] == 0 {
				heap.Push(ready, u)
			}
		}
	}
	if len(order) < len(g.Nodes) {
		return nil, fmt.Errorf("graph %q has a cycle: %s", g.Name, describeCycle(g.Nodes, deps, pending))
	}
	return order, nil
}

// dependencies are the values n reads: its inputs and the outer-scope
// values its subgraphs read.
func (n *Node) dependencies() []*Value {
	var out []*Value
	for _, v := range n.inputs {
		if v != nil {
			out = append(out, v)
		}
	}
	for _, sg := range n.Subgraphs() {
		sg.Walk(func(m *Node) {
			for _, v := range m.inputs {
				if v != nil && !definedWithin(v.graph, sg) {
					out = append(out, v)
				}
			}
		})
	}
	return out
}

// definedWithin reports whether scope is sg or nested inside it.
func definedWithin(scope, sg *Graph) bool {
	for s := scope; s != nil; s = s.Parent {
		if s == sg {
			return true
		}
	}
	return false
}

// describeCycle follows unmet dependencies from a stuck node until a node
// repeats, and prints that loop.
func describeCycle(nodes []*Node, deps [][]int, pending []int) string {
	start := -1
	for i, p := range pending {
		if p > 0 {
			start = i
			break
		}
	}
	pos := map[int]int{}
	var path []int
	for i := start; i >= 0; {
		if k, ok := pos[i]; ok {
			path = path[k:]
			break
		}
		pos[i] = len(path)
		path = append(path, i)
		next := -1
		for _, j := range deps[i] {
			if pending[j] > 0 {
				next = j
				break
			}
		}
		i = next
	}
	var parts []string
	for _, i := range path {
		parts = append(parts, fmt.Sprintf("%q (%s)", nodes[i].Name, nodes[i].Op))
	}
	return strings.Join(parts, " -> ")
}

type intHeap []int

func (h intHeap) Len() int           { return len(h) }
func (h intHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h intHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *intHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *intHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
