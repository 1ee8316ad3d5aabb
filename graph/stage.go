package graph

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
)

// Save stages m at path, with its data files, in the output set. Only the
// output's own names are written:
//   - tensors for the output's data file go to opts.DataFile (default
//     OUT.data);
//   - an unmodified external file in the output's folder is referenced where
//     it is, and nothing is written;
//   - one in another folder is hard-linked (or copied) beside the output as
//     OUT.base-N.data, N counting from 1 in order of first use, and the
//     tensors' locations are rewritten to it. The model's own location
//     (".bashrc", "out.onnx", "sub/dir/w.bin") never names a file we write.
//
// Every external file m reads becomes an input of the set. A derived file
// that exists already is replaced only if loracc made it: it is the very
// file or holds the very bytes it would receive, or the previous model at
// path references it (the output of an earlier run of the same command).
// Any other file stays and the save fails.
func (o *Outputs) Save(m *Model, path string, opts SaveOptions) error {
	_, err := o.saveModel(m, path, opts, false)
	return err
}

// SaveTemp writes m as a scratch model in dir, read by checks before the
// outputs are committed; it and its data files are removed with the set.
// It returns the model's path.
func (o *Outputs) SaveTemp(m *Model, dir string) (string, error) {
	return o.saveModel(m, filepath.Join(dir, ".loracc-check.onnx"), SaveOptions{}, true)
}

// Preview writes a scratch copy of the model staged at path whose
// locations point at the staged data files, so that ONNX Runtime can run
// the output before it is committed. It returns the copy's path.
func (o *Outputs) Preview(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	for _, f := range o.files {
		if f.abs == abs && f.view != nil {
			view, err := f.view()
			if err != nil {
				return "", fmt.Errorf("%s: %w", path, err)
			}
			return o.scratch(filepath.Dir(abs), "."+filepath.Base(abs)+".check-*.onnx", writeBytes(view))
		}
	}
	return "", fmt.Errorf("%s: no model staged there", path)
}

// placement is one file the saved model reads: the location the output
// will name, the path of its staged copy (what a preview names), and how
// to set the model's entries to either.
type placement struct {
	final, staged string
	point         func(loc string)
}

func (o *Outputs) saveModel(m *Model, path string, opts SaveOptions, temp bool) (string, error) {
	if opts.DataFile == "" {
		opts.DataFile = filepath.Base(path) + ".data"
	}
	if opts.MinExternal <= 0 {
		opts.MinExternal = 1024
	}
	if err := checkLocation(opts.DataFile); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	dir := filepath.Dir(path)
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	dirSt, err := os.Stat(absDir)
	if err != nil {
		return "", fmt.Errorf("%s: output folder: %w", path, err)
	}
	s := &saver{opts: opts}
	if err := s.build(m); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	for _, src := range s.sources {
		if src.st, err = src.ext.stat(); err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		o.addInput(src.ext.Path(), "input external data file", src.st)
	}
	var abs string
	if !temp {
		// Claim the model first, so that an output on an input fails
		// before any data is written.
		if abs, err = o.claim(path); err != nil {
			return "", err
		}
	}
	var places []placement
	if len(s.pending) > 0 {
		final := filepath.Join(dir, filepath.FromSlash(opts.DataFile))
		tmp, err := o.stageDerived(final, path, temp, nil, s.offset, s.writeData)
		if err != nil {
			return "", err
		}
		places = append(places, placement{opts.DataFile, tmp, s.pointData})
	}
	n := 0
	for _, src := range s.sources {
		if st, err := os.Stat(src.ext.Dir); err == nil && os.SameFile(st, dirSt) {
			continue // already beside the output: keep its location
		}
		n++
		name := filepath.Base(path) + ".base-" + strconv.Itoa(n) + ".data"
		final := filepath.Join(dir, name)
		tmp, err := o.stageDerived(final, path, temp, src, src.st.Size(), src.copyTo)
		if err != nil {
			return "", err
		}
		places = append(places, placement{name, tmp, src.point})
		if !temp && filepath.Base(tmp) != name && opts.Notef != nil {
			// Told once committed: a failed run placed nothing.
			notef, from := opts.Notef, src.ext.Path()
			o.notes = append(o.notes, func() {
				notef("external data %s placed beside the output as %s (outputs may only reference files in their own folder)", from, final)
			})
		}
	}
	// The committed model names the final locations; the view a check
	// runs names the staged files. The view is encoded only when a check
	// asks for it (Preview), so a save marshals the model once.
	point := func(staged bool) error {
		for _, p := range places {
			loc := p.final
			if staged {
				if loc, err = relLocation(absDir, p.staged); err != nil {
					return err
				}
			}
			p.point(loc)
		}
		return nil
	}
	if err := point(temp); err != nil {
		return "", err
	}
	data, err := s.encode()
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if temp {
		return o.scratch(absDir, ".loracc-check-*.onnx", writeBytes(data))
	}
	f, err := o.stage(path, abs, writeBytes(data))
	if err != nil {
		return "", err
	}
	f.view = func() ([]byte, error) {
		if len(places) == 0 {
			return data, nil
		}
		if err := point(true); err != nil {
			return nil, err
		}
		return s.encode()
	}
	return path, nil
}

// stageDerived stages a data file loracc names after the output model
// owner, from src by hard link or else from write. It returns the staged
// file's path: final itself when final already is src (nothing to write).
// size is the file's length, to refuse a file of another size unwritten.
func (o *Outputs) stageDerived(final, owner string, temp bool, src *source, size int64, write func(io.Writer) error) (string, error) {
	abs, err := filepath.Abs(final)
	if err != nil {
		return "", err
	}
	dir, base := filepath.Split(abs)
	if temp {
		if tmp, ok := src.link(dir, base); ok {
			o.temps = append(o.temps, tmp)
			return tmp, nil
		}
		return o.scratch(dir, "."+base+".tmp-*", write)
	}
	if src != nil {
		if st, err := os.Stat(abs); err == nil && os.SameFile(st, src.st) {
			return abs, nil
		}
	}
	if abs, err = o.claim(final); err != nil {
		return "", err
	}
	// A file already there is replaced only if it is loracc's: data of the
	// previous output of this name, or the same bytes (what a rerun after
	// a crash between two renames finds).
	foreign := exists(abs) && !referencedBy(owner, abs)
	refuse := fmt.Errorf("%s exists and is not a data file of the previous %s; loracc replaces only files it wrote: remove it or choose another output name", final, owner)
	if st, err := os.Stat(abs); foreign && (err != nil || st.Size() != size) {
		return "", refuse
	}
	tmp, ok := src.link(dir, base)
	if ok {
		o.files = append(o.files, &outFile{path: final, abs: abs, tmp: tmp})
	} else {
		f, err := o.stage(final, abs, write)
		if err != nil {
			return "", err
		}
		tmp = f.tmp
	}
	if foreign && !sameBytes(tmp, abs) {
		return "", refuse
	}
	return tmp, nil
}

// sameBytes reports whether two files hold the same bytes.
func sameBytes(a, b string) bool {
	fa, _, err := OpenRegular(a)
	if err != nil {
		return false
	}
	defer fa.Close()
	fb, _, err := OpenRegular(b)
	if err != nil {
		return false
	}
	defer fb.Close()
	sa, err1 := fa.Stat()
	sb, err2 := fb.Stat()
	if err1 != nil || err2 != nil || sa.Size() != sb.Size() || !sb.Mode().IsRegular() {
		return false
	}
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false
		}
		if ea != nil || eb != nil {
			return (ea == io.EOF || ea == io.ErrUnexpectedEOF) && ea == eb
		}
	}
}

// link hard-links src to a fresh hidden name in dir, reporting whether
// that worked and gave the very file (a symlink inside the model's folder
// is linked as a link, which would resolve elsewhere: copy instead).
func (src *source) link(dir, base string) (string, bool) {
	if src == nil {
		return "", false
	}
	tmp, err := reserveName(dir, "."+base+".tmp-*")
	if err != nil {
		return "", false
	}
	if err := os.Link(src.ext.Path(), tmp); err != nil {
		return "", false
	}
	if st, err := os.Stat(tmp); err == nil && os.SameFile(st, src.st) {
		return tmp, true
	}
	os.Remove(tmp)
	return "", false
}

// copyTo copies src's bytes, opened through its folder's root.
func (src *source) copyTo(w io.Writer) error {
	f, _, err := src.ext.open()
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// referencedBy reports whether the model at path reads the file abs: then
// abs is that model's data, written by the run this one supersedes.
func referencedBy(path, abs string) bool {
	m, err := Load(path)
	if err != nil {
		return false
	}
	for _, e := range m.externals() {
		if filepath.Clean(e.Path()) == abs {
			return true
		}
	}
	return false
}

func relLocation(dir, path string) (string, error) {
	rel, err := filepath.Rel(dir, path)
	if err != nil {
		return "", err
	}
	return filepath.ToSlash(rel), nil
}

func writeBytes(b []byte) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}
}
